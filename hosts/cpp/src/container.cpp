#include "container.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "errors.hpp"
#include "geometry.hpp"

namespace dcae {
namespace {

constexpr uint8_t kMagic[4] = {'D', 'C', 'A', 'E'};
constexpr size_t kHeaderSize = 64;
// The coder emits whole 32-bit words and flushes a 64-bit state.
constexpr uint64_t kStreamWord = 4;
constexpr uint64_t kMinStreamLength = 8;

void put_u16(std::vector<uint8_t>& out, uint32_t v) {
  for (int b = 0; b < 2; ++b) out.push_back(static_cast<uint8_t>(v >> (8 * b)));
}
void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int b = 0; b < 4; ++b) out.push_back(static_cast<uint8_t>(v >> (8 * b)));
}
uint32_t get_u16(const uint8_t* p) { return uint32_t{p[0]} | (uint32_t{p[1]} << 8); }
uint32_t get_u32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
uint32_t get_u32_be(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

uint32_t crc32_of(uint32_t crc, const uint8_t* data, size_t size) {
  // zlib's length is a uInt: feed large payloads in pieces.
  while (size > 0) {
    const uInt piece = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = static_cast<uint32_t>(::crc32(crc, data, piece));
    data += piece;
    size -= piece;
  }
  return crc;
}

std::string stream_length_problem(const char* name, uint64_t length) {
  if (length % kStreamWord || length < kMinStreamLength)
    return std::string(name) + " stream length " + std::to_string(length) +
           " is not a rANS stream length (a multiple of 4, at least 8)";
  return {};
}

[[noreturn]] void corrupt(const std::string& reason) { fail(ErrorKind::corrupt_stream, reason); }

std::string hxw(uint32_t h, uint32_t w) { return std::to_string(h) + "x" + std::to_string(w); }

struct BinLayout {
  uint32_t height, width;
  size_t y_start, y_size, z_start, z_size;
};

// Empty when the bytes are a .bin whose lengths add up, else the reason.
std::string bin_layout(const uint8_t* data, size_t size, BinLayout* layout) {
  constexpr size_t kHead = 8, kLength = 4;
  if (size < kHead + kLength)
    return "truncated .bin file: " + std::to_string(size) + " bytes, at least " + std::to_string(kHead + kLength) +
           " needed";
  const uint32_t height = (uint32_t{data[0]} << 8) | data[1];
  const uint32_t width = (uint32_t{data[2]} << 8) | data[3];
  const uint64_t y_length = get_u32_be(data + 4);
  if (!height || !width) return ".bin header has an empty side (" + hxw(height, width) + ")";
  const uint64_t y_end = kHead + y_length;
  if (y_end + kLength > size)
    return "truncated .bin file: y stream of " + std::to_string(y_length) + " bytes runs past the end (" +
           std::to_string(size) + " bytes)";
  const uint64_t z_length = get_u32_be(data + y_end);
  const uint64_t z_end = y_end + kLength + z_length;
  if (z_end > size)
    return "truncated .bin file: z stream of " + std::to_string(z_length) + " bytes runs past the end (" +
           std::to_string(size) + " bytes)";
  if (z_end < size) return ".bin file has " + std::to_string(size - z_end) + " bytes after its z stream";
  *layout = {height, width, kHead, static_cast<size_t>(y_length), static_cast<size_t>(y_end + kLength),
             static_cast<size_t>(z_length)};
  return {};
}

std::string not_dcae_reason(const uint8_t* data, size_t size) {
  if (size == 0) return "empty file, not a .dcae file";
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  static const uint8_t kJpeg[3] = {0xff, 0xd8, 0xff};
  if (size >= 8 && std::memcmp(data, kPng, 8) == 0) return "this is a PNG image, not a .dcae file";
  if (size >= 3 && std::memcmp(data, kJpeg, 3) == 0) return "this is a JPEG image, not a .dcae file";
  BinLayout layout;
  if (bin_layout(data, size, &layout).empty()) return "this is an upstream DCAE .bin file, not a .dcae file";
  return "not a .dcae file (no DCAE magic)";
}

}  // namespace

std::vector<uint8_t> pack_dcae(const FileHeader& header, const std::vector<uint8_t>& z, const std::vector<uint8_t>& y,
                               const std::vector<uint8_t>& side) {
  // The coder produced these: a problem is a bug, not a bad input.
  for (const std::string& problem :
       {stream_length_problem("z", z.size()), stream_length_problem("y", y.size()), dimension_problem(header.height, header.width)})
    if (!problem.empty()) throw std::logic_error(problem);
  if (header.portable == side.empty())
    throw std::logic_error("a portable file carries a side stream, and only a portable file");
  if (header.gain_code == 0) throw std::logic_error("gain_code 0 is not a gain");
  std::vector<uint8_t> out(kMagic, kMagic + 4);
  out.push_back(kFormatVersion);
  out.push_back(static_cast<uint8_t>((header.reduced_precision_entropy ? kFlagReducedPrecisionEntropy : 0) |
                                     (header.portable ? kFlagPortable : 0)));
  put_u16(out, header.gain_code);
  put_u32(out, header.height);
  put_u32(out, header.width);
  put_u32(out, padded_side(header.height));
  put_u32(out, padded_side(header.width));
  put_u16(out, padded_side(header.height) / kZDownsample);
  put_u16(out, padded_side(header.width) / kZDownsample);
  out.insert(out.end(), header.fingerprint.begin(), header.fingerprint.end());
  put_u32(out, static_cast<uint32_t>(z.size()));
  put_u32(out, static_cast<uint32_t>(y.size()));
  put_u32(out, static_cast<uint32_t>(side.size()));
  uint32_t margin_bits;
  std::memcpy(&margin_bits, &header.margin, 4);
  put_u32(out, margin_bits);
  uint32_t crc = crc32_of(0, out.data(), out.size());
  for (const std::vector<uint8_t>* stream : {&z, &y, &side}) crc = crc32_of(crc, stream->data(), stream->size());
  put_u32(out, crc);
  for (const std::vector<uint8_t>* stream : {&z, &y, &side}) out.insert(out.end(), stream->begin(), stream->end());
  return out;
}

DcaeFile unpack_dcae(const uint8_t* data, size_t size) {
  // A few bytes that could still become "DCAE" count as truncated.
  if (size == 0 || std::memcmp(data, kMagic, std::min<size_t>(size, 4)) != 0) corrupt(not_dcae_reason(data, size));
  if (size < 5) corrupt("truncated .dcae file: " + std::to_string(size) + " bytes, no format version");
  const uint8_t version = data[4];
  if (version > 0 && version < kFormatVersion)
    corrupt(".dcae format version " + std::to_string(version) + " predates this decoder's format " +
            std::to_string(kFormatVersion) + "; re-encode the image");
  if (version != kFormatVersion)
    corrupt(".dcae format version " + std::to_string(version) + " is not supported (this decoder reads format " +
            std::to_string(kFormatVersion) + ")");
  if (size < kHeaderSize)
    corrupt("truncated .dcae file: " + std::to_string(size) + " bytes, the header alone is " +
            std::to_string(kHeaderSize));

  DcaeFile file;
  FileHeader& h = file.header;
  const uint8_t flags = data[5];
  constexpr uint8_t kKnown = kFlagReducedPrecisionEntropy | kFlagPortable;
  if (flags & ~kKnown) {
    char bits[8];
    std::snprintf(bits, sizeof bits, "0x%02x", flags & ~kKnown);
    corrupt(std::string("unknown .dcae flag bits ") + bits);
  }
  h.reduced_precision_entropy = flags & kFlagReducedPrecisionEntropy;
  h.portable = flags & kFlagPortable;
  if (h.reduced_precision_entropy && h.portable)
    corrupt(".dcae flags mark the file both portable and reduced-precision, which no encoder writes");
  const uint64_t side_length = get_u32(data + 52);
  const uint32_t margin_bits = get_u32(data + 56);
  std::memcpy(&h.margin, &margin_bits, 4);
  if (h.portable) {
    if (!std::isfinite(h.margin) || !(h.margin > 0.0f) || h.margin > kMaxPortableMargin)
      corrupt(".dcae portable margin " + std::to_string(h.margin) + " is outside (0, 0.01]");
    if (!side_length) corrupt(".dcae portable file has no side stream");
  } else {
    if (h.margin != 0.0f) corrupt(".dcae margin must be 0 in a file that is not portable");
    if (side_length) corrupt(".dcae file that is not portable has a side stream");
  }
  h.gain_code = static_cast<uint16_t>(get_u16(data + 6));
  if (h.gain_code == 0) corrupt(".dcae gain_code 0 is not a gain (1..65535)");
  h.height = get_u32(data + 8);
  h.width = get_u32(data + 12);
  if (const std::string problem = dimension_problem(h.height, h.width); !problem.empty())
    corrupt(".dcae header has an impossible image size: " + problem);
  const uint32_t padded_h = get_u32(data + 16), padded_w = get_u32(data + 20);
  if (padded_h != padded_side(h.height) || padded_w != padded_side(h.width))
    corrupt(".dcae padded size " + hxw(padded_h, padded_w) + " does not match " +
            hxw(padded_side(h.height), padded_side(h.width)) + " for a " + hxw(h.height, h.width) + " image");
  const uint32_t z_h = get_u16(data + 24), z_w = get_u16(data + 26);
  if (z_h != padded_h / kZDownsample || z_w != padded_w / kZDownsample)
    corrupt(".dcae z shape " + hxw(z_h, z_w) + " does not match " +
            hxw(padded_h / kZDownsample, padded_w / kZDownsample) + " for a " + hxw(h.height, h.width) + " image");
  std::memcpy(h.fingerprint.data(), data + 28, 16);
  const uint64_t z_length = get_u32(data + 44), y_length = get_u32(data + 48);

  const uint64_t payload = size - kHeaderSize;
  const uint64_t promised = z_length + y_length + side_length;
  if (promised > payload)
    corrupt("truncated .dcae file: header promises " + std::to_string(promised) + " payload bytes, found " +
            std::to_string(payload));
  if (promised < payload) corrupt(".dcae file has " + std::to_string(payload - promised) + " bytes after its payload");
  for (const std::string& problem : {stream_length_problem("z", z_length), stream_length_problem("y", y_length)})
    if (!problem.empty()) corrupt(problem);
  const size_t crc_at = kHeaderSize - 4;
  const uint32_t stored = get_u32(data + crc_at);
  const uint32_t computed = crc32_of(crc32_of(0, data, crc_at), data + kHeaderSize, payload);
  if (stored != computed) {
    char both[64];
    std::snprintf(both, sizeof both, "stored 0x%08x, computed 0x%08x", stored, computed);
    corrupt(std::string(".dcae CRC mismatch (") + both + "): the file is damaged");
  }
  const uint8_t* p = data + kHeaderSize;
  file.z = {p, static_cast<size_t>(z_length)};
  file.y = {p + z_length, static_cast<size_t>(y_length)};
  file.side = {p + z_length + y_length, static_cast<size_t>(side_length)};
  return file;
}

FileKind sniff(const uint8_t* data, size_t size) {
  if (size >= 4 && std::memcmp(data, kMagic, 4) == 0) return FileKind::dcae;
  BinLayout layout;
  if (bin_layout(data, size, &layout).empty()) return FileKind::bin;
  return FileKind::unknown;
}

BinFile unpack_bin(const uint8_t* data, size_t size) {
  BinLayout layout;
  if (const std::string problem = bin_layout(data, size, &layout); !problem.empty()) corrupt(problem);
  return {layout.height, layout.width, {data + layout.y_start, layout.y_size}, {data + layout.z_start, layout.z_size}};
}

}  // namespace dcae

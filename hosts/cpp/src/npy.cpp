#include "npy.hpp"

#include <zlib.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "errors.hpp"
#include "fileio.hpp"

namespace dcae {
namespace {

[[noreturn]] void refuse(const std::string& what, const std::string& reason) { fail(ErrorKind::bundle, what + ": " + reason); }

uint64_t le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int b = bytes - 1; b >= 0; --b) v = (v << 8) | p[b];
  return v;
}

// The value text after 'key': in numpy's header dict, or empty.
std::string dict_value(const std::string& header, const std::string& key) {
  const std::string quoted = "'" + key + "':";
  const size_t at = header.find(quoted);
  if (at == std::string::npos) return {};
  size_t start = at + quoted.size();
  while (start < header.size() && header[start] == ' ') ++start;
  size_t end = start;
  if (start < header.size() && header[start] == '(') {
    end = header.find(')', start);
    return end == std::string::npos ? std::string() : header.substr(start, end - start + 1);
  }
  if (start < header.size() && header[start] == '\'') {
    end = header.find('\'', start + 1);
    return end == std::string::npos ? std::string() : header.substr(start + 1, end - start - 1);
  }
  while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  return header.substr(start, end - start);
}

std::vector<size_t> parse_shape(const std::string& text, const std::string& what) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') refuse(what, "malformed .npy shape");
  std::vector<size_t> shape;
  size_t i = 1;
  while (i < text.size() - 1) {
    while (i < text.size() - 1 && (text[i] == ' ' || text[i] == ',')) ++i;
    if (i >= text.size() - 1) break;
    uint64_t value = 0;
    size_t digits = 0;
    while (i < text.size() - 1 && text[i] >= '0' && text[i] <= '9') {
      value = value * 10 + static_cast<uint64_t>(text[i] - '0');
      if (value > (uint64_t{1} << 40)) refuse(what, "absurd .npy shape");
      ++i;
      ++digits;
    }
    if (!digits) refuse(what, "malformed .npy shape");
    shape.push_back(static_cast<size_t>(value));
  }
  return shape;
}

std::vector<uint8_t> inflate_raw(const uint8_t* data, size_t size, size_t expected, const std::string& what) {
  std::vector<uint8_t> out(expected);
  z_stream stream{};
  if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) refuse(what, "cannot start zlib");
  stream.next_in = const_cast<Bytef*>(data);
  stream.avail_in = static_cast<uInt>(size);
  stream.next_out = out.data();
  stream.avail_out = static_cast<uInt>(expected);
  const int status = inflate(&stream, Z_FINISH);
  const size_t produced = expected - stream.avail_out;
  inflateEnd(&stream);
  if (status != Z_STREAM_END || produced != expected) refuse(what, "damaged deflated member");
  return out;
}

}  // namespace

size_t NpyArray::count() const {
  size_t n = 1;
  for (size_t side : shape) n *= side;
  return n;
}

NpyArray parse_npy(const uint8_t* data, size_t size, const std::string& what) {
  static const uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10 || std::memcmp(data, kMagic, 6) != 0) refuse(what, "not a .npy array");
  const uint8_t major = data[6];
  size_t header_length, header_start;
  if (major == 1) {
    header_length = le(data + 8, 2);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) refuse(what, "truncated .npy header");
    header_length = le(data + 8, 4);
    header_start = 12;
  } else {
    refuse(what, ".npy version " + std::to_string(major) + " is not supported");
  }
  if (header_length > size - header_start) refuse(what, "truncated .npy header");
  const std::string header(reinterpret_cast<const char*>(data + header_start), header_length);
  NpyArray array;
  const std::string descr = dict_value(header, "descr");
  if (descr.size() < 3 || (descr[0] != '<' && descr[0] != '|') || std::string("fiu").find(descr[1]) == std::string::npos)
    refuse(what, "unsupported .npy dtype '" + descr + "'");
  array.kind = descr[1];
  const std::string bytes = descr.substr(2);
  if (bytes != "1" && bytes != "2" && bytes != "4" && bytes != "8") refuse(what, "unsupported .npy dtype '" + descr + "'");
  array.item_size = static_cast<size_t>(bytes[0] - '0');
  if (array.kind == 'f' && array.item_size < 4) refuse(what, "unsupported .npy dtype '" + descr + "'");
  if (dict_value(header, "fortran_order") != "False") refuse(what, "Fortran-ordered .npy arrays are not supported");
  array.shape = parse_shape(dict_value(header, "shape"), what);
  const size_t body = size - header_start - header_length;
  uint64_t expected = array.item_size;
  for (size_t side : array.shape) {
    expected *= side;
    if (expected > body) refuse(what, ".npy data is shorter than its shape");
  }
  if (expected != body) refuse(what, ".npy data length does not match its shape");
  const uint8_t* start = data + header_start + header_length;
  array.raw.assign(start, start + body);
  return array;
}

std::map<std::string, NpyArray> read_npz(const std::string& path, const std::string& what) {
  std::vector<uint8_t> zip;
  try {
    zip = read_file(path);
  } catch (const Error& e) {
    refuse(what, e.what());
  }
  const size_t size = zip.size();
  const uint8_t* z = zip.data();
  auto need = [&](uint64_t offset, uint64_t length) {
    if (offset > size || length > size - offset) refuse(what, "damaged zip structure");
  };
  // End of central directory: 22 bytes plus a comment of up to 65535.
  constexpr size_t kEocd = 22;
  if (size < kEocd) refuse(what, "not a zip archive");
  size_t eocd = std::numeric_limits<size_t>::max();
  for (size_t at = size - kEocd + 1; at-- > 0 && size - at <= kEocd + 65535;)
    if (le(z + at, 4) == 0x06054b50) {
      eocd = at;
      break;
    }
  if (eocd == std::numeric_limits<size_t>::max()) refuse(what, "not a zip archive");
  uint64_t entries = le(z + eocd + 10, 2);
  uint64_t directory = le(z + eocd + 16, 4);
  if (entries == 0xFFFF || directory == 0xFFFFFFFF) {  // zip64: the locator sits just before
    if (eocd < 20 || le(z + eocd - 20, 4) != 0x07064b50) refuse(what, "damaged zip64 structure");
    const uint64_t record = le(z + eocd - 20 + 8, 8);
    need(record, 56);
    if (le(z + record, 4) != 0x06064b50) refuse(what, "damaged zip64 structure");
    entries = le(z + record + 32, 8);
    directory = le(z + record + 48, 8);
  }
  std::map<std::string, NpyArray> arrays;
  uint64_t at = directory;
  for (uint64_t e = 0; e < entries; ++e) {
    need(at, 46);
    if (le(z + at, 4) != 0x02014b50) refuse(what, "damaged zip directory");
    const uint64_t method = le(z + at + 10, 2), crc = le(z + at + 16, 4);
    uint64_t packed = le(z + at + 20, 4), unpacked = le(z + at + 24, 4);
    const uint64_t name_length = le(z + at + 28, 2), extra_length = le(z + at + 30, 2), comment = le(z + at + 32, 2);
    uint64_t local = le(z + at + 42, 4);
    need(at + 46, name_length + extra_length + comment);
    const std::string name(reinterpret_cast<const char*>(z + at + 46), name_length);
    // zip64 extra field: the 64-bit values of the fields saturated above, in this order.
    for (uint64_t x = at + 46 + name_length; x + 4 <= at + 46 + name_length + extra_length;) {
      const uint64_t id = le(z + x, 2), length = le(z + x + 2, 2);
      need(x + 4, length);
      if (id == 0x0001) {
        uint64_t field = x + 4;
        for (uint64_t* value : {&unpacked, &packed, &local}) {
          if (*value != 0xFFFFFFFF) continue;
          if (field + 8 > x + 4 + length) refuse(what, "damaged zip64 field");
          *value = le(z + field, 8);
          field += 8;
        }
      }
      x += 4 + length;
    }
    at += 46 + name_length + extra_length + comment;

    need(local, 30);
    if (le(z + local, 4) != 0x04034b50) refuse(what, "damaged zip member " + name);
    const uint64_t data_start = local + 30 + le(z + local + 26, 2) + le(z + local + 28, 2);
    need(data_start, packed);
    if (unpacked >= (uint64_t{1} << 32)) refuse(what, "zip member " + name + " is too large");
    std::vector<uint8_t> bytes;
    if (method == 0) {
      if (packed != unpacked) refuse(what, "damaged zip member " + name);
      bytes.assign(z + data_start, z + data_start + packed);
    } else if (method == 8) {
      bytes = inflate_raw(z + data_start, packed, unpacked, what);
    } else {
      refuse(what, "zip member " + name + " uses an unsupported compression method");
    }
    if (crc32(0, bytes.data(), static_cast<uInt>(bytes.size())) != crc) refuse(what, "zip member " + name + " fails its CRC");
    std::string key = name;
    if (key.size() > 4 && key.compare(key.size() - 4, 4, ".npy") == 0) key.resize(key.size() - 4);
    arrays[key] = parse_npy(bytes.data(), bytes.size(), what + " " + key);
  }
  return arrays;
}

NpyArray read_npy_file(const std::string& path, const std::string& what) {
  const std::vector<uint8_t> bytes = read_file(path);
  return parse_npy(bytes.data(), bytes.size(), what);
}

std::vector<float> to_float32(const NpyArray& array, const std::string& what) {
  if (array.kind != 'f') refuse(what, "must be float");
  std::vector<float> out(array.count());
  for (size_t i = 0; i < out.size(); ++i) {
    const uint8_t* p = array.raw.data() + i * array.item_size;
    if (array.item_size == 4) {
      const uint32_t bits = static_cast<uint32_t>(le(p, 4));
      std::memcpy(&out[i], &bits, 4);
    } else {
      const uint64_t bits = le(p, 8);
      double value;
      std::memcpy(&value, &bits, 8);
      out[i] = static_cast<float>(value);
    }
  }
  return out;
}

std::vector<int32_t> to_int32(const NpyArray& array, const std::string& what) {
  if (array.kind != 'i' && array.kind != 'u') refuse(what, "must be integer");
  std::vector<int32_t> out(array.count());
  const int bits = 8 * static_cast<int>(array.item_size);
  for (size_t i = 0; i < out.size(); ++i) {
    const uint64_t raw = le(array.raw.data() + i * array.item_size, static_cast<int>(array.item_size));
    int64_t value;
    if (array.kind == 'u') {
      if (raw > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) refuse(what, "holds values outside int32");
      value = static_cast<int64_t>(raw);
    } else {
      // Sign-extend from the item's width.
      value = bits == 64 ? static_cast<int64_t>(raw)
                         : static_cast<int64_t>(raw << (64 - bits)) >> (64 - bits);
      if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max())
        refuse(what, "holds values outside int32");
    }
    out[i] = static_cast<int32_t>(value);
  }
  return out;
}

namespace {

std::vector<uint8_t> npy_with(const std::vector<size_t>& shape, const char* descr, const void* data, size_t bytes) {
  std::string shape_text = "(";
  for (size_t i = 0; i < shape.size(); ++i) shape_text += (i ? ", " : "") + std::to_string(shape[i]);
  shape_text += shape.size() == 1 ? ",)" : ")";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape_text + ", }";
  // Version 1: the header, padded with spaces and a newline, ends on a 64-byte boundary.
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  const uint8_t preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<uint8_t>(header.size() & 0xFF),
                                static_cast<uint8_t>(header.size() >> 8)};
  std::vector<uint8_t> out;
  out.reserve(sizeof preamble + header.size() + bytes);
  out.insert(out.end(), preamble, preamble + sizeof preamble);
  out.insert(out.end(), header.begin(), header.end());
  const uint8_t* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + bytes);  // little-endian hosts only (x86-64, aarch64)
  return out;
}

size_t product(const std::vector<size_t>& shape) {
  size_t n = 1;
  for (size_t side : shape) n *= side;
  return n;
}

}  // namespace

std::vector<uint8_t> npy_bytes(const std::vector<size_t>& shape, const float* data) {
  return npy_with(shape, "<f4", data, 4 * product(shape));
}

std::vector<uint8_t> npy_bytes(const std::vector<size_t>& shape, const int32_t* data) {
  return npy_with(shape, "<i4", data, 4 * product(shape));
}

}  // namespace dcae

// The .dcae file (dcae_deploy/runtime/container.py, docs/dcae-format.md),
// format 3, and the upstream DCAE .bin. Little-endian, a 64-byte header:
//
//   0 magic "DCAE"   4 version (3)   5 flags   6 gain_code (u16)   8 height
//   12 width   16 padded height   20 padded width   24 z height (u16)
//   26 z width (u16)   28 fingerprint (16)   44 z length   48 y length
//   52 side length   56 margin (f32)   60 CRC32   64 payload (z, y, side)
//
// The CRC (zlib) covers the header bytes before it and the payload. The
// reader checks every field against the others and the CRC before anything
// of the image's size is allocated; files of earlier format versions are
// refused (re-encoded, not read).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dcae {

constexpr uint8_t kFormatVersion = 3;
constexpr uint8_t kFlagReducedPrecisionEntropy = 0x01;
constexpr uint8_t kFlagPortable = 0x02;
// Portable margins are natural-log distances in (0, kMaxPortableMargin].
constexpr float kMaxPortableMargin = 0.01f;
// The quantization gain a of the quality knob travels as gain_code = a * 4096
// (uint16, 1..65535): float(gain_code) / 4096 is exact in float32, so every
// decoder computes the same a. 4096 is a = 1, the fixed-rate model's rate
// (quality.hpp); decoders read every code.
constexpr uint16_t kGainCodeOne = 4096;
inline float gain_of(uint16_t gain_code) { return static_cast<float>(gain_code) / static_cast<float>(kGainCodeOne); }

struct FileHeader {
  uint32_t height = 0, width = 0;
  bool reduced_precision_entropy = false;
  bool portable = false;
  std::array<uint8_t, 16> fingerprint{};
  float margin = 0.0f;  // the portable margin, 0 for other files
  uint16_t gain_code = kGainCodeOne;
};

struct ByteSpan {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// Views into the bytes given to unpack_dcae.
struct DcaeFile {
  FileHeader header;
  ByteSpan z, y, side;
};

std::vector<uint8_t> pack_dcae(const FileHeader& header, const std::vector<uint8_t>& z, const std::vector<uint8_t>& y,
                               const std::vector<uint8_t>& side);
// Error(corrupt_stream) with a one-line reason for anything wrong.
DcaeFile unpack_dcae(const uint8_t* data, size_t size);

struct BinFile {
  uint32_t height, width;
  ByteSpan y, z;
};

enum class FileKind { dcae, bin, unknown };
// What the bytes claim to be, without checking them fully (a .bin, which has
// no magic, is recognised by its lengths adding up).
FileKind sniff(const uint8_t* data, size_t size);
BinFile unpack_bin(const uint8_t* data, size_t size);

}  // namespace dcae

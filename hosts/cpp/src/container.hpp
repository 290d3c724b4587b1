// The .dcae file (dcae_deploy/runtime/container.py, docs/dcae-format.md), versions 1 and 2,
// and the upstream DCAE .bin. Little-endian; version 1 has a 56-byte header,
// version 2 a 64-byte one with a side-stream length and the portable margin:
//
//   0 magic "DCAE"   4 version   5 flags   6 reserved   8 height   12 width
//   16 padded height   20 padded width   24 z height (u16)   26 z width (u16)
//   28 fingerprint (16)   44 z length   48 y length
//   v1: 52 CRC32, 56 payload (z, y)
//   v2: 52 side length   56 margin (f32)   60 CRC32   64 payload (z, y, side)
//
// The CRC (zlib) covers the header bytes before it and the payload. The
// reader checks every field against the others and the CRC before anything
// of the image's size is allocated.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dcae {

constexpr uint8_t kFlagReducedPrecisionEntropy = 0x01;
constexpr uint8_t kFlagPortable = 0x02;
// Version 2, portable files only: the side stream has threshold shifts
// (layout 2 or 3, never empty); without it, layout 1 (the marked list alone).
constexpr uint8_t kFlagShiftedThresholds = 0x04;
// Only with kFlagShiftedThresholds: the shifts are signed (layout 3).
constexpr uint8_t kFlagSignedShifts = 0x08;
// Portable margins are natural-log distances in (0, kMaxPortableMargin].
constexpr float kMaxPortableMargin = 0.01f;

struct FileHeader {
  uint8_t version = 2;
  uint32_t height = 0, width = 0;
  bool reduced_precision_entropy = false;
  bool portable = false;
  std::array<uint8_t, 16> fingerprint{};
  float margin = 0.0f;  // version 2: the portable margin, 0 for other files
  // Of a portable file: the side stream's layout (portable.hpp): 3 with
  // signed threshold shifts (flag bits 2 and 3), 2 with upward ones (bit 2),
  // 1 the marked list alone. Writers write 3.
  int side_layout = 3;
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

// The image-size rules of dcae_deploy/runtime/geometry.py: padded sides are multiples of
// 128 and at least 256 (the model downsamples by 64 and its window attention
// fails at 128), padding is centred zeros, and sizes are bounded before
// anything is allocated.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

namespace dcae {

constexpr uint32_t kPadMultiple = 128;
constexpr uint32_t kMinPaddedSide = 256;
constexpr uint32_t kMaxSide = 65535;  // what the upstream .bin header holds
constexpr uint64_t kMaxPixels = 8192ull * 8192ull;
constexpr uint32_t kZDownsample = 64;
constexpr uint32_t kYDownsample = 16;

inline uint32_t padded_side(uint32_t side) {
  const uint64_t rounded = (uint64_t{side} + kPadMultiple - 1) / kPadMultiple * kPadMultiple;
  return static_cast<uint32_t>(std::max<uint64_t>(kMinPaddedSide, rounded));
}

struct Padding {
  uint32_t left, right, top, bottom;
};

// Centred; the left and top get the smaller half, as upstream's pad().
inline Padding padding_for(uint32_t height, uint32_t width) {
  const uint32_t ph = padded_side(height), pw = padded_side(width);
  const uint32_t left = (pw - width) / 2, top = (ph - height) / 2;
  return {left, pw - width - left, top, ph - height - top};
}

// Empty when the size is codable, else the reason.
inline std::string dimension_problem(uint64_t height, uint64_t width) {
  const std::string size = std::to_string(height) + "x" + std::to_string(width);
  if (height < 1 || width < 1) return "image has an empty side (" + size + ")";
  if (height > kMaxSide || width > kMaxSide) return "image side over " + std::to_string(kMaxSide) + " px (" + size + ")";
  if (height * width > kMaxPixels)
    return "image has " + std::to_string(height * width) + " pixels, over the limit of " + std::to_string(kMaxPixels) +
           " (" + size + ")";
  return {};
}

}  // namespace dcae

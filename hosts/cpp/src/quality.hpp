// The quality knob (dcae_deploy/runtime/quality.py): quality 0..100 -> the
// quantization gain a a file is coded at, and rate control, which searches
// the gain for the largest file within a byte target.
//
// Every y slice is coded as q = round((y - mu) * a) with the table index of
// float32(sigma * a), and y_hat = q / a + mu; a travels in the header as
// gain_code = a * 4096 (container.hpp). A quality maps onto the model's rate
// levels (manifest "rate_levels", the gains its variable-rate training
// learned): Q = 50 on the reference level at a = 1 exactly (gains count
// relative to the reference level's), Q = 0 half a level below the
// lowest and Q = 100 half a level above the highest (kTrainedReach), log a
// linear in between and extrapolated from the end levels. A model trained at one rate gets
// untrained_levels(): a from 1/8 at Q = 0 to 4 at Q = 100, doubling every
// 50/3 qualities below 50 and every 25 above.
//
// Everything here computes in double exactly as the Python module does (the
// same operations in the same order, halves rounded to even), so both hosts
// pick the same gain codes and, for rate control, try the same ones.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "dcae/codec.hpp"

namespace dcae {

constexpr double kMinQuality = 0, kMaxQuality = 100;
// The quality that lands on the reference level: the fixed-rate model's rate.
constexpr double kDefaultQuality = 50;
// Rate control keeps a file of at least this share of an exact target.
constexpr double kTargetTolerance = 0.03;
// A target in bits per pixel is above 0 and under this.
constexpr double kMaxTargetBpp = 64;

// How far past its lowest and highest trained level, in levels, Q = 0 and
// Q = 100 of a variable-rate model lie.
constexpr double kTrainedReach = 0.5;

// A model's rate levels: their gains (ascending), which one Q = 50 is, and
// how far past the end levels (in levels) Q = 0 and Q = 100 lie.
struct RateLevels {
  std::vector<double> gains;
  int reference = 0;
  double reach = kTrainedReach;

  // Empty when the levels are sound, else why not (RateLevels.__post_init__).
  std::string problem() const;
  // The gain a at `quality` (0..100, checked by the caller).
  double gain(double quality) const;
  uint16_t gain_code(double quality) const;
  // The range rate control searches: the gain codes of quality 0 and 100,
  // widened to at least the untrained rule's ends (a from 1/8 to 4).
  std::pair<uint16_t, uint16_t> code_range() const;
};

// Gains 1/8, 1, 4 with the reference in the middle and no reach (a model trained at one
// rate gains little quality for its bits above a = 4; docs/quality.md).
RateLevels untrained_levels();

// The nearest gain_code (1..65535) to the gain a > 0.
uint16_t gain_code_of(double gain);

// Error(bad_input) in dcae_deploy.runtime.quality's words unless `quality`
// lies in 0..100, or the target above 0 and under 64 bits per pixel;
// `shown` is the value as the user gave it.
void check_quality(double quality, const std::string& shown);
void check_target_bpp(double bpp, const std::string& shown);
// Error(bad_input) in RateChoice's words unless at most one is given and it is valid.
void check_rate_choice(const RateChoice& rate);

// What rate control aims at: at most `max_bytes`, and with `exact`, at least
// (1 - kTargetTolerance) of it (a target size rather than a cap). `what` is
// the option as the user gave it, for messages ("--max-bytes 5000").
struct RateTarget {
  uint64_t max_bytes = 0;
  bool exact = false;
  std::string what;
};

// --target-bpp B on an image of height x width: max(1, int(B * H * W / 8)) bytes.
RateTarget bpp_target(double bpp, uint32_t height, uint32_t width);
RateTarget bytes_target(uint64_t max_bytes);

// The tries (gain_code, file bytes) in the order made, and the code kept.
struct RateSearch {
  std::vector<std::pair<uint16_t, uint64_t>> tries;
  uint16_t gain_code = 0;
};

// Whether a file of `size` bytes at `code` is a better fit than one of
// `other_size` at `other_code` (both within the target): the larger file,
// then the larger code.
inline bool better_fit(uint64_t size, uint16_t code, uint64_t other_size, uint16_t other_code) {
  return size != other_size ? size > other_size : code > other_code;
}

// search_gain_code: the largest gain code in `range` whose file fits
// `target`, trying codes as the Python search does, starting at `start`.
// `size_at(code)` codes the image at a gain code and returns the file's
// size. Error(bad_input), one line in the Python words, when even the lowest
// gain's file is over the target, or (exact) the highest gain's under it.
RateSearch search_gain_code(const std::function<uint64_t(uint16_t)>& size_at, const RateTarget& target,
                            std::pair<uint16_t, uint16_t> range, uint16_t start = 4096);

}  // namespace dcae

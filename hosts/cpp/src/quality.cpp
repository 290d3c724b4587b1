#include "quality.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "container.hpp"
#include "errors.hpp"

namespace dcae {

namespace {

// Sizes grow about as gain ** 0.8 near the reference rate (embedded model,
// Kodak): the slope of the first step, before two tries give their own.
constexpr double kFirstSlope = 0.8;

std::string g_format(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

using Tries = std::vector<std::pair<uint16_t, uint64_t>>;

// _next_try: the next gain code to try, strictly between `below` and `above`
// (the codes known to fit and not to fit) and within the range. The sizes
// are kept in the order tried, which decides ties as Python's stable sort.
int64_t next_try(const Tries& sizes, double goal, int64_t below, int64_t above, int64_t low_code,
                 int64_t high_code) {
  Tries nearest = sizes;
  const auto distance = [goal](const std::pair<uint16_t, uint64_t>& t) {
    return std::fabs(std::log(static_cast<double>(t.second) / goal));
  };
  std::stable_sort(nearest.begin(), nearest.end(),
                   [&](const auto& a, const auto& b) { return distance(a) < distance(b); });
  const double code0 = nearest[0].first, size0 = static_cast<double>(nearest[0].second);
  double slope = kFirstSlope;
  if (nearest.size() >= 2 && nearest[0].second != nearest[1].second && nearest[0].first != nearest[1].first) {
    const double code1 = nearest[1].first, size1 = static_cast<double>(nearest[1].second);
    slope = std::log(size1 / size0) / std::log(code1 / code0);
    if (!(0.05 < slope && slope < 5)) slope = kFirstSlope;  // noise between close codes
  }
  // As a double: a guess far out of range (even infinite) goes to the ends.
  const double guess = std::nearbyint(code0 * std::exp(std::log(goal / size0) / slope));
  const int64_t lo = std::max(below, low_code - 1), hi = std::min(above, high_code + 1);
  if (static_cast<double>(lo) < guess && guess < static_cast<double>(hi)) return static_cast<int64_t>(guess);
  if (guess <= static_cast<double>(lo)) return lo < low_code ? low_code : hi - lo > 1 ? (lo + hi) / 2 : lo;
  return hi > high_code ? high_code : (lo + hi + 1) / 2;
}

}  // namespace

std::string RateLevels::problem() const {
  bool increasing = gains.size() >= 2;
  for (size_t i = 0; i < gains.size(); ++i)
    increasing = increasing && gains[i] > 0 && std::isfinite(gains[i]) && (i == 0 || gains[i] > gains[i - 1]);
  if (!increasing) return "rate levels need two or more increasing positive gains";
  if (!(reference > 0 && static_cast<size_t>(reference) < gains.size() - 1))
    return "the reference level must lie strictly between the lowest and the highest, got " +
           std::to_string(reference) + " of " + std::to_string(gains.size());
  if (!(reach >= 0 && reach <= 1)) return "the reach past the end levels must be from 0 to 1 level";
  return "";
}

double RateLevels::gain(double quality) const {
  const int last = static_cast<int>(gains.size()) - 1;
  // position in levels: -reach at Q = 0, reference at 50, last + reach at 100
  double position;
  if (quality <= kDefaultQuality)
    position = (reference + reach) * quality / kDefaultQuality - reach;
  else
    position = reference + (last + reach - reference) * (quality - kDefaultQuality) / (kMaxQuality - kDefaultQuality);
  const int low = std::min(std::max(static_cast<int>(std::floor(position)), 0), last - 1);
  const double frac = position - low;  // below 0 or above 1 past the end levels
  // log gains relative to the reference level's: Q = 50 is a = 1 exactly
  const double ref = std::log(gains[static_cast<size_t>(reference)]);
  const double low_log = std::log(gains[static_cast<size_t>(low)]) - ref;
  const double high_log = std::log(gains[static_cast<size_t>(low) + 1]) - ref;
  return std::exp((1 - frac) * low_log + frac * high_log);
}

uint16_t RateLevels::gain_code(double quality) const { return gain_code_of(gain(quality)); }

std::pair<uint16_t, uint16_t> RateLevels::code_range() const {
  const RateLevels untrained = untrained_levels();
  return {std::min(gain_code(kMinQuality), gain_code_of(untrained.gains.front())),
          std::max(gain_code(kMaxQuality), gain_code_of(untrained.gains.back()))};
}

RateLevels untrained_levels() { return {{0.125, 1.0, 4.0}, 1, 0.0}; }

uint16_t gain_code_of(double gain) {
  const double code = std::nearbyint(gain * kGainCodeOne);  // halves to even, as Python's round
  return static_cast<uint16_t>(std::min(std::max(code, 1.0), 65535.0));
}

void check_quality(double quality, const std::string& shown) {
  if (!(quality >= kMinQuality && quality <= kMaxQuality))  // also refuses NaN
    fail(ErrorKind::bad_input, "quality must be from " + g_format(kMinQuality) + " to " + g_format(kMaxQuality) +
                                   ", got " + shown);
}

void check_target_bpp(double bpp, const std::string& shown) {
  if (!(bpp > 0 && bpp < kMaxTargetBpp))
    fail(ErrorKind::bad_input, "target_bpp must be above 0 and under " + g_format(kMaxTargetBpp) + ", got " + shown);
}

void check_rate_choice(const RateChoice& rate) {
  std::string given;
  int count = 0;
  for (const auto& [name, set] : {std::pair<const char*, bool>{"quality", rate.quality.has_value()},
                                  {"max_bytes", rate.max_bytes.has_value()},
                                  {"target_bpp", rate.target_bpp.has_value()}})
    if (set) given += (count++ ? " and " : "") + std::string(name);
  if (count > 1) fail(ErrorKind::bad_input, "give one of quality, max_bytes and target_bpp, not " + given);
  if (rate.quality) check_quality(*rate.quality, g_format(*rate.quality));
  if (rate.max_bytes && *rate.max_bytes < 1)
    fail(ErrorKind::bad_input, "max_bytes must be a positive whole number, got " + std::to_string(*rate.max_bytes));
  if (rate.target_bpp) check_target_bpp(*rate.target_bpp, g_format(*rate.target_bpp));
}

RateTarget bytes_target(uint64_t max_bytes) { return {max_bytes, false, "--max-bytes " + std::to_string(max_bytes)}; }

RateTarget bpp_target(double bpp, uint32_t height, uint32_t width) {
  const double bytes = bpp * height * width / 8;
  return {std::max<uint64_t>(1, static_cast<uint64_t>(bytes)), true, "--target-bpp " + g_format(bpp)};
}

RateSearch search_gain_code(const std::function<uint64_t(uint16_t)>& size_at, const RateTarget& target,
                            std::pair<uint16_t, uint16_t> range, uint16_t start) {
  const int64_t low_code = range.first, high_code = range.second;
  const uint64_t max_bytes = target.max_bytes;
  const double floor = std::ceil(static_cast<double>(max_bytes) * (1 - kTargetTolerance));
  const double goal = static_cast<double>(max_bytes) * (1 - kTargetTolerance / 2);
  RateSearch search;
  Tries& sizes = search.tries;
  const auto size_of = [&](int64_t code) -> const uint64_t* {
    for (const auto& [c, size] : sizes)
      if (c == code) return &size;
    return nullptr;
  };
  const auto fail_with = [&](const std::string& why) { fail(ErrorKind::bad_input, target.what + why); };

  int64_t code = std::min(std::max(int64_t{start}, low_code), high_code);
  while (true) {
    const uint64_t size = size_at(static_cast<uint16_t>(code));
    bool seen = false;
    for (auto& entry : sizes)
      if (entry.first == code) entry.second = size, seen = true;
    if (!seen) sizes.emplace_back(static_cast<uint16_t>(code), size);

    // The best fitting try, and the bracket: the largest code known to fit
    // and the smallest known not to.
    const std::pair<uint16_t, uint64_t>* best = nullptr;
    int64_t below = low_code - 1, above = high_code + 1;
    for (const auto& entry : sizes) {
      if (entry.second <= max_bytes) {
        if (!best || better_fit(entry.second, entry.first, best->second, best->first)) best = &entry;
        below = std::max<int64_t>(below, entry.first);
      } else {
        above = std::min<int64_t>(above, entry.first);
      }
    }
    if (best && static_cast<double>(best->second) >= floor) {
      search.gain_code = best->first;
      return search;
    }
    if (const uint64_t* lowest = size_of(low_code); !best && lowest)
      fail_with(" is out of reach: the smallest file this image codes to is " + std::to_string(*lowest) +
                " bytes (the lowest gain)");
    if (const uint64_t* highest = size_of(high_code); highest && *highest <= max_bytes) {
      if (!target.exact) {  // a cap above what the highest gain needs
        search.gain_code = best->first;
        return search;
      }
      fail_with(" is out of reach: the highest gain gives " + std::to_string(*highest) + " bytes");
    }
    if (above - below <= 1) {  // neighbouring codes step over the window
      if (!target.exact && best) {
        search.gain_code = best->first;
        return search;
      }
      if (best)
        fail_with(" cannot be met within " + std::to_string(static_cast<int>(std::lround(kTargetTolerance * 100))) +
                  "%: the nearest file under it has " + std::to_string(best->second) + " bytes");
      fail_with(" is out of reach");
    }
    code = next_try(sizes, goal, std::max(below, low_code - 1), std::min(above, high_code + 1), low_code, high_code);
  }
}

}  // namespace dcae

#include "tiling.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <stdexcept>

#include "bundle.hpp"
#include "errors.hpp"
#include "geometry.hpp"

namespace dcae {
namespace {

// Image pixels per latent pixel, in area.
constexpr int64_t kPixelsPerLatent = int64_t{kYDownsample} * kYDownsample;
// The Swin stages' strides in g_a and g_s (windowed attention at 1/2, 1/4, 1/8 scale).
constexpr int64_t kSwinStageStrides[] = {2, 4, 8};
// The transforms' share of the available memory by default
// (dcae_deploy.runtime.memory.DEFAULT_BUDGET_FRACTION).
constexpr double kDefaultBudgetFraction = 0.5;
// Sizes past this are as good as unlimited (every image fits), and stay in range.
constexpr double kLargestBudget = 4611686018427387904.0;  // 2**62

// Python's // on integers: rounds toward minus infinity.
int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Python's // on floats (CPython's float_floor_div): not always floor(a / b).
double py_floor_div(double a, double b) {
  double mod = std::fmod(a, b);
  double div = (a - mod) / b;
  if (mod != 0.0 && ((b < 0) != (mod < 0))) div -= 1.0;
  if (div == 0.0) return std::copysign(0.0, a / b);
  double floored = std::floor(div);
  if (div - floored > 0.5) floored += 1.0;
  return floored;
}

uint64_t isqrt(uint64_t n) {
  uint64_t root = static_cast<uint64_t>(std::sqrt(static_cast<double>(n)));
  while (root > 0 && root > n / root) --root;  // root * root > n, without overflow
  while ((root + 1) <= n / (root + 1)) ++root;
  return root;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string quoted(const std::string& text) { return "'" + text + "'"; }

}  // namespace

int64_t attention_period(int64_t window_size) {
  int64_t pixels = kYDownsample;
  for (int64_t stride : kSwinStageStrides) pixels = std::lcm(pixels, window_size * stride);
  return pixels / kYDownsample;
}

int64_t minimum_tile(int64_t halo, int64_t period) { return -floor_div(-(2 * halo + period), period) * period; }

std::vector<Span> plan_axis(int64_t length, int64_t tile, int64_t halo, int64_t period) {
  if (length % period || tile % period)
    throw std::invalid_argument("length " + std::to_string(length) + " and tile " + std::to_string(tile) +
                                " must be multiples of the period " + std::to_string(period));
  if (tile >= length) return {{0, 0, length}};
  if (tile < minimum_tile(halo, period))
    throw std::invalid_argument("tile " + std::to_string(tile) + " leaves no interior with halo " +
                                std::to_string(halo) + " (period " + std::to_string(period) + ")");
  std::vector<Span> spans;
  for (int64_t start = 0; start < length;) {
    // The latest aligned origin that still gives `start` its halo, slid back
    // inward where the tile would run past the end.
    const int64_t origin = std::max<int64_t>(0, std::min(floor_div(start - halo, period) * period, length - tile));
    const int64_t end = origin + tile == length ? length : origin + tile - halo;
    spans.push_back({origin, start, end});
    start = end;
  }
  return spans;
}

TilePlan plan_tiles(int64_t height, int64_t width, int64_t tile_height, int64_t tile_width, int64_t halo,
                    int64_t period) {
  TilePlan plan;
  plan.height = height;
  plan.width = width;
  plan.tile_height = std::min(tile_height, height);
  plan.tile_width = std::min(tile_width, width);
  plan.halo = halo;
  plan.rows = plan_axis(height, plan.tile_height, halo, period);
  plan.cols = plan_axis(width, plan.tile_width, halo, period);
  return plan;
}

int64_t balanced_tile(int64_t length, int64_t tile, int64_t halo, int64_t period) {
  if (tile >= length) return length;
  const size_t count = plan_axis(length, tile, halo, period).size();
  int64_t best = tile;
  for (int64_t smaller = tile - period; smaller > minimum_tile(halo, period) - 1; smaller -= period) {
    if (plan_axis(length, smaller, halo, period).size() > count) break;
    best = smaller;
  }
  return best;
}

std::optional<TilePlan> plan_for_budget(int64_t height, int64_t width, int64_t bytes_per_pixel,
                                        double io_bytes_per_pixel, uint64_t budget, int64_t halo, int64_t period,
                                        uint64_t* needed) {
  const int64_t pixels = height * width * kPixelsPerLatent;
  // (Products of int64 values stay in range: the bundle bounds bytes_per_pixel
  // and geometry.hpp the pixels.)
  if (static_cast<uint64_t>(bytes_per_pixel * pixels) <= budget)
    return plan_tiles(height, width, height, width, halo, period);
  const int64_t smallest = minimum_tile(halo, period);
  const int64_t low_h = std::min(smallest, height), low_w = std::min(smallest, width);
  const double fixed = io_bytes_per_pixel * static_cast<double>(pixels);
  const double least = static_cast<double>(bytes_per_pixel * low_h * low_w * kPixelsPerLatent) + fixed;
  const double budget_value = static_cast<double>(budget);
  if (least > budget_value) {
    if (needed) *needed = static_cast<uint64_t>(std::ceil(least));
    return std::nullopt;
  }
  const double max_tile = (budget_value - fixed) / static_cast<double>(bytes_per_pixel * kPixelsPerLatent);
  // As square as the image allows (the least halo per interior pixel), then
  // as long as the budget lets along the side the image did not cap.
  const int64_t root = static_cast<int64_t>(isqrt(static_cast<uint64_t>(max_tile)));
  const int64_t side = std::max(floor_div(root, period) * period, std::max(low_h, low_w));
  int64_t th = std::max(low_h, std::min(side, height));
  const int64_t tw =
      std::max(low_w, std::min(width, floor_div(static_cast<int64_t>(py_floor_div(max_tile, static_cast<double>(th))),
                                                period) * period));
  th = std::max(low_h, std::min(height, floor_div(static_cast<int64_t>(py_floor_div(max_tile, static_cast<double>(tw))),
                                                  period) * period));
  return plan_tiles(height, width, balanced_tile(height, th, halo, period), balanced_tile(width, tw, halo, period),
                    halo, period);
}

int64_t with_large_tile_allowance(int64_t bytes_per_pixel) {
  return (bytes_per_pixel * kLargeTileAllowance.first + kLargeTileAllowance.second - 1) / kLargeTileAllowance.second;
}

TilePlan plan_transform(const std::string& graph, int64_t height, int64_t width, int64_t bytes_per_pixel,
                        double io_bytes_per_pixel, double output_bytes_per_pixel, uint64_t memory_limit,
                        uint64_t held, int64_t halo, int64_t period) {
  const std::string size =
      std::to_string(height * kYDownsample) + "x" + std::to_string(width * kYDownsample);
  uint64_t needed = 0;
  if (memory_limit) {
    if (bytes_per_pixel <= 0)
      fail(ErrorKind::bundle, "the bundle records no bytes_per_pixel for " + graph +
                                  " (it was exported before the field), which a memory limit needs: export it again");
    // The limit bounds the whole process: what it holds already is not the transform's.
    const uint64_t budget = memory_limit > held ? memory_limit - held : 0;
    if (std::optional<TilePlan> plan = plan_for_budget(height, width, with_large_tile_allowance(bytes_per_pixel),
                                                       output_bytes_per_pixel, budget, halo, period, &needed))
      return *plan;
    const std::string holding =
        held ? ", with " + format_size(static_cast<double>(held)) + " held by the process already" : "";
    fail(ErrorKind::bad_input, "memory limit " + format_size(static_cast<double>(memory_limit)) +
                                   " is too small for " + graph + " on a " + size + " (padded) image" + holding +
                                   ": it needs at least " + format_size(static_cast<double>(held + needed)));
  }
  const std::optional<uint64_t> budget = default_budget();
  if (!budget || bytes_per_pixel <= 0)  // the machine or the bundle does not say: as without tiling
    return plan_tiles(height, width, height, width, halo, period);
  if (std::optional<TilePlan> plan =
          plan_for_budget(height, width, bytes_per_pixel, io_bytes_per_pixel, *budget, halo, period, &needed))
    return *plan;
  // The default budget is a share of what is available; the smallest tile
  // may still fit in all of it.
  const std::optional<uint64_t> available = available_memory();
  if (available && needed > *available)
    fail(ErrorKind::bad_input, graph + " on a " + size + " (padded) image needs at least " +
                                   format_size(static_cast<double>(needed)) + ", and only " +
                                   format_size(static_cast<double>(*available)) + " is available");
  return *plan_for_budget(height, width, bytes_per_pixel, io_bytes_per_pixel, needed, halo, period, nullptr);
}

TilePlan bundle_transform_plan(const Bundle& bundle, const std::string& graph, int64_t height, int64_t width,
                               uint64_t memory_limit, uint64_t held, bool input_held) {
  const auto recorded = bundle.bytes_per_pixel.find(graph);
  // float32: the image (3 channels) and the latent (M channels at 1/16 x 1/16)
  const double image = 4 * 3.0, latent = 4 * static_cast<double>(bundle.latent_channels) / kPixelsPerLatent;
  const double output = graph == "g_a" ? latent : image;
  return plan_transform(graph, height, width, recorded == bundle.bytes_per_pixel.end() ? 0 : recorded->second,
                        image + latent, input_held ? output : image + latent, memory_limit, held, kDefaultHalo,
                        attention_period(bundle.window_size));
}

uint64_t parse_size(const std::string& text) {
  // \s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*, case-insensitive, the whole text
  const auto refuse = [&]() -> uint64_t {
    fail(ErrorKind::bad_input, "expected a size such as 2G, 500M or 1048576 (bytes), got " + quoted(text));
  };
  size_t i = 0;
  const size_t n = text.size();
  const auto digit = [&](size_t at) { return at < n && text[at] >= '0' && text[at] <= '9'; };
  while (i < n && is_space(text[i])) ++i;
  const size_t number_start = i;
  size_t whole_digits = 0, fraction_digits = 0;
  while (digit(i)) ++i, ++whole_digits;
  if (i < n && text[i] == '.') {
    ++i;
    while (digit(i)) ++i, ++fraction_digits;
  }
  if (whole_digits == 0 && fraction_digits == 0) return refuse();
  const std::string number = text.substr(number_start, i - number_start);
  while (i < n && is_space(text[i])) ++i;
  double unit = 1;
  if (i < n) {
    switch (text[i] | 0x20) {
      case 'k': unit = 1024.0; break;
      case 'm': unit = 1048576.0; break;
      case 'g': unit = 1073741824.0; break;
      case 't': unit = 1099511627776.0; break;
      default: unit = 0;
    }
    if (unit != 0) ++i;
    else unit = 1;
  }
  if (i < n && (text[i] | 0x20) == 'i' && i + 1 < n && (text[i + 1] | 0x20) == 'b') i += 2;
  else if (i < n && (text[i] | 0x20) == 'b') ++i;
  while (i < n && is_space(text[i])) ++i;
  if (i != n) return refuse();
  const double value = std::strtod(number.c_str(), nullptr) * unit;
  if (!(value >= 1)) fail(ErrorKind::bad_input, "a memory size must be at least 1 byte, got " + quoted(text));
  return value >= kLargestBudget ? static_cast<uint64_t>(kLargestBudget) : static_cast<uint64_t>(value);
}

std::string format_size(double size) {
  static const struct {
    char unit;
    double factor;
  } kUnits[] = {{'G', 1073741824.0}, {'M', 1048576.0}, {'K', 1024.0}};
  char text[64];
  for (const auto& u : kUnits)
    if (size >= u.factor) {
      const double scaled = size / u.factor;
      const int decimals = scaled < 100 ? 1 : 0;
      const double step = decimals ? 10.0 : 1.0;
      // -(-scaled * step // 1) / step: rounded up, so that the size printed
      // is never below the one meant.
      const double rounded = -py_floor_div(-scaled * step, 1.0) / step;
      std::snprintf(text, sizeof text, "%.*f%c", decimals, rounded, u.unit);
      return text;
    }
  std::snprintf(text, sizeof text, "%.0f", -py_floor_div(-size, 1.0));
  return text;
}

namespace {

// A "Field:  N kB" line of a /proc file (meminfo, self/status), in bytes, as
// dcae_deploy.runtime.memory.proc_field_kib reads it; nullopt where the file
// or the field is missing.
std::optional<uint64_t> proc_field_bytes(const char* path, const std::string& field) {
  std::ifstream lines(path);
  const std::string prefix = field + ":";
  std::string line;
  while (std::getline(lines, line))
    if (line.rfind(prefix, 0) == 0) {
      char* end = nullptr;
      const unsigned long long kib = std::strtoull(line.c_str() + prefix.size(), &end, 10);
      if (end == line.c_str() + prefix.size()) return std::nullopt;
      return static_cast<uint64_t>(kib) * 1024;
    }
  return std::nullopt;
}

}  // namespace

std::optional<uint64_t> available_memory() {
  if (const std::optional<uint64_t> available = proc_field_bytes("/proc/meminfo", "MemAvailable")) return available;
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page_size = ::sysconf(_SC_PAGE_SIZE);
  if (pages < 0 || page_size < 0) return std::nullopt;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
}

std::optional<uint64_t> default_budget() {
  const std::optional<uint64_t> available = available_memory();
  if (!available) return std::nullopt;
  return static_cast<uint64_t>(static_cast<double>(*available) * kDefaultBudgetFraction);
}

uint64_t resident_memory() { return proc_field_bytes("/proc/self/status", "VmRSS").value_or(0); }

}  // namespace dcae

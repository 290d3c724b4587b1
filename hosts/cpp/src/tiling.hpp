// Tiled image transforms: the plan of dcae_deploy/runtime/tiling.py, and the
// memory budget of dcae_deploy/runtime/memory.py, in C++. The plans must be
// the Python planner's to the tile (tests/test_cpp_host.py compares them over
// a grid), so every step keeps the Python arithmetic: integer steps in
// integers, float steps in doubles with Python's floor division.
//
// Geometry in LATENT pixels (one latent pixel = 16 image pixels): tile
// origins on the attention window grid (`attention_period`), a halo of
// context around each interior except at the image's borders, one tile shape
// per image (edge tiles slide inward), so OpenVINO compiles once per image.
#pragma once

#include <utility>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dcae/codec.hpp"

namespace dcae {

// dcae_deploy.runtime.tiling.DEFAULT_HALO: the halo (latent px) at which the
// embedded model's tiled g_a gives the whole-image y bit for bit
// (docs/tiling.md, the halo curve).
constexpr int64_t kDefaultHalo = 8;
// Under a memory limit a graph's bytes per pixel count 21/20 of what the
// bundle records (rounded up), as in dcae_deploy.runtime.tiling: they are
// measured at 256x256 and 512x512, and a multi-megapixel tile takes a few
// per cent more.
constexpr std::pair<int64_t, int64_t> kLargeTileAllowance{21, 20};
int64_t with_large_tile_allowance(int64_t bytes_per_pixel);

// One tile along one axis: the tile reads [origin, origin + tile) and keeps
// [start, end).
struct Span {
  int64_t origin, start, end;
};

struct TilePlan {
  int64_t height = 0, width = 0;  // the latent
  int64_t tile_height = 0, tile_width = 0;
  int64_t halo = 0;
  std::vector<Span> rows, cols;

  // One tile, the whole image: the graph runs on it as it is.
  bool whole() const { return rows.size() == 1 && cols.size() == 1; }
  size_t count() const { return rows.size() * cols.size(); }
};

// The latent-pixel period tile origins keep: a whole number of windows at
// every Swin stage (strides 2, 4, 8) and a whole number of latent pixels.
int64_t attention_period(int64_t window_size);
// The smallest tile with a non-empty interior whatever the origin's rounding.
int64_t minimum_tile(int64_t halo, int64_t period);
std::vector<Span> plan_axis(int64_t length, int64_t tile, int64_t halo, int64_t period);
TilePlan plan_tiles(int64_t height, int64_t width, int64_t tile_height, int64_t tile_width, int64_t halo,
                    int64_t period);
int64_t balanced_tile(int64_t length, int64_t tile, int64_t halo, int64_t period);

// The plan whose cost fits `budget` bytes (plan_for_budget): the whole image
// when bytes_per_pixel x pixels fits, else the largest balanced tiles that
// fit with the whole image's input and output arrays (io_bytes_per_pixel x
// pixels). Not even the smallest tile: nullopt, and `needed` is the
// smallest budget that works.
std::optional<TilePlan> plan_for_budget(int64_t height, int64_t width, int64_t bytes_per_pixel,
                                        double io_bytes_per_pixel, uint64_t budget, int64_t halo, int64_t period,
                                        uint64_t* needed);

// The plan `graph` ("g_a" or "g_s") runs with on a latent of height x width,
// as dcae_deploy.runtime.tiling.ImageTransforms.plan. Under `memory_limit`
// (a bound on the whole process's resident memory): within the limit less
// the `held` bytes the process holds now, a tiled run costing the tile plus
// `output_bytes_per_pixel` x pixels (the whole-image output still to come);
// refused, one line naming the smallest limit that works (`held` + the
// smallest tile's cost). Without one (0): within half of the memory
// available now, a tiled run costing the tile plus `io_bytes_per_pixel` x
// pixels (the whole input and output), and where not even the smallest tile
// fits that but does fit in all that is available, the smallest tiles.
// `bytes_per_pixel` 0: the bundle records none, so only the whole image can
// run, and only without a memory limit.
TilePlan plan_transform(const std::string& graph, int64_t height, int64_t width, int64_t bytes_per_pixel,
                        double io_bytes_per_pixel, double output_bytes_per_pixel, uint64_t memory_limit,
                        uint64_t held, int64_t halo, int64_t period);

struct Bundle;
// plan_transform with the bundle's figures: its bytes_per_pixel for `graph`,
// the whole image's float32 input and output (3 channels at full size, M at
// 1/16 x 1/16), the default halo and its window grid. `held`: what the
// process holds when the plan is made, the transform's input included
// (resident_memory()); `input_held` false: the input is still to come, and
// counts beside the tile as the output does.
TilePlan bundle_transform_plan(const Bundle& bundle, const std::string& graph, int64_t height, int64_t width,
                               uint64_t memory_limit, uint64_t held, bool input_held = true);

// "2G", "500M", "1.5GiB", "64k", "1048576" -> bytes (K, M, G, T: powers of
// 1024), as dcae_deploy.runtime.memory.parse_size; Error(bad_input) naming
// the text otherwise.
uint64_t parse_size(const std::string& text);
// Bytes -> "1.3G", "640M", "12K", rounded up (format_size).
std::string format_size(double size);
// MemAvailable (bytes), the free physical memory where /proc/meminfo lacks
// it; nullopt where unknown.
std::optional<uint64_t> available_memory();
// Half of the available memory (DEFAULT_BUDGET_FRACTION); nullopt where unknown.
std::optional<uint64_t> default_budget();
// Bytes this process holds in memory now (VmRSS of /proc/self/status); 0
// where it does not say (dcae_deploy.runtime.memory.resident_memory).
uint64_t resident_memory();

}  // namespace dcae

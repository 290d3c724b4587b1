// dcae::Codec: a DCAE bundle (ONNX graphs + entropy tables, written by
// dcae-export) run in C++, reading and writing the same .dcae files as the
// Python runtime (dcae_deploy/runtime/codec.py).
//
//   dcae::Codec codec("bundle/");                 // OpenVINO on the CPU, f32
//   dcae::Image image = dcae::read_png("photo.png");
//   std::vector<uint8_t> file = codec.compress(image);   // a portable .dcae
//   dcae::Image decoded = codec.decompress(file);
//   for (auto& [stage, seconds] : codec.last_timings()) ...
//
// Every failure a caller can cause (bad image, corrupt or foreign file, broken
// bundle) is a dcae::Error with a one-line message.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace dcae {

enum class ErrorKind {
  bad_input,       // an image or argument that cannot be coded
  corrupt_stream,  // a .dcae file that is malformed, truncated or damaged
  desync,          // the entropy decoder did not end where the encoder started
  fingerprint,     // a file written by another setup
  bundle,          // a bundle that is missing files, altered or of another format
  backend,         // the inference backend failed or is unavailable
  io,              // reading or writing a file failed
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message);
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

// 8-bit RGB, rows top to bottom, samples interleaved R, G, B.
struct Image {
  uint32_t height = 0;
  uint32_t width = 0;
  std::vector<uint8_t> rgb;
};

// (stage, seconds) in the order the stages ran: graph names, "z_coding",
// "slice_coding_i", "y_coding", "side_stream", "compile" (OpenVINO compiling
// graphs for a new image size), "total".
using Timings = std::vector<std::pair<std::string, double>>;

// The natural-log margin portable files get for the embedded model and from
// bundles that record no measured one (dcae_deploy.runtime.portable.DEFAULT_MARGIN).
extern const double kDefaultPortableMargin;

struct Options {
  std::string backend = "openvino";  // or "openvino-bf16": g_a, h_a, g_s in bf16
  int threads = 0;                   // threads per graph; 0: one per core
  bool portable = true;              // write portable files
  // 0: the margin measured for the model when its bundle was exported
  // (manifest "portable"), kDefaultPortableMargin where it records none.
  double margin = 0.0;
  // Bytes the image transforms (g_a, g_s) may take: an image that needs more
  // runs in tiles that fit (docs/tiling.md); one that cannot is refused with
  // the smallest size that works. 0: half of the memory available when each
  // image is coded.
  uint64_t memory_limit = 0;
};

// How the rate is set (dcae_deploy.runtime.quality.RateChoice): at most one
// of a quality from 0 to 100 (higher is better), a cap on the file's bytes
// (the largest file that fits, never over) and a target in bits per pixel
// (the largest file within 3 % under it); none: quality 50, the model's
// reference rate. A size target runs the image transforms once and the slice
// loop and entropy coding once per try; one out of reach is Error(bad_input)
// naming the nearest size the image codes to.
struct RateChoice {
  std::optional<double> quality;
  std::optional<uint64_t> max_bytes;
  std::optional<double> target_bpp;
};

// How an image transform ran: `count` tiles of tile_height x tile_width
// latent pixels (16 image pixels each); one tile is the whole latent; 0
// tiles: it did not run.
struct TransformTiles {
  uint64_t count = 0;
  int64_t tile_height = 0, tile_width = 0;
};

// Everything an encode computed, for tests and tools that compare hosts.
struct EncodeResult {
  std::vector<uint8_t> file;
  uint32_t height = 0, width = 0;
  std::array<int64_t, 4> latent_shape{};  // (1, M, h, w)
  std::vector<int32_t> symbols;           // round((y - mu) * gain), C order
  std::vector<int32_t> indexes;           // the scale-table index each symbol was coded with (shifts applied)
  std::vector<float> y_hat;               // what g_s decodes
  std::vector<int32_t> z_symbols;
  uint64_t marked = 0;                    // elements in the side stream's marked list
  unsigned threshold_shifts = 0;          // portable files: K, 1 without shifts; 0 for other files
  uint64_t shift_block = 0;               // the shifts' block length when K > 1, else 0
  TransformTiles analysis_tiles;          // how g_a ran
  uint16_t gain_code = 4096;              // the quantization gain the file is coded at, times 4096
  // Rate control's tries, (gain_code, file bytes) in the order made; empty
  // for a quality.
  std::vector<std::pair<uint16_t, uint64_t>> rate_tries;
};

struct DecodeResult {
  Image image;  // rgb empty when decoded without synthesis
  std::array<int64_t, 4> latent_shape{};
  std::vector<int32_t> symbols;  // read from the y stream
  std::vector<float> y_hat;
  TransformTiles synthesis_tiles;  // how g_s ran
};

class Codec {
 public:
  explicit Codec(const std::string& bundle_dir, const Options& options = {});
  ~Codec();
  Codec(Codec&&) noexcept;
  Codec& operator=(Codec&&) noexcept;

  std::vector<uint8_t> compress(const Image& image, const RateChoice& rate = {});
  // A .dcae written by another setup is refused unless `force`; a portable
  // one decodes on any backend whose error fits within its margin.
  Image decompress(const std::vector<uint8_t>& file, bool force = false);

  EncodeResult encode(const Image& image, const RateChoice& rate = {});
  // Without `synthesize` the decode stops once the y stream is read and its
  // end checked: the symbols and y_hat, no image pixels (g_s does not run,
  // and it cannot change a symbol), for checking that a file decodes here.
  DecodeResult decode(const std::vector<uint8_t>& file, bool force = false, bool synthesize = true);

  const Timings& last_timings() const;
  // What the non-portable fingerprint names: the backend's arithmetic.
  std::string numeric_class() const;
  // Warnings of the last call (e.g. an upstream .bin without a fingerprint);
  // before the first, the opening's (e.g. a bundle this CPU runs badly).
  const std::vector<std::string>& last_warnings() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// PNG in and out. read_png converts as the Python runtime's loader does:
// grayscale and palette become RGB, alpha is dropped (with a warning, added
// to `warnings` when given), 16-bit samples are reduced to 8 bits.
Image read_png(const std::string& path, std::vector<std::string>* warnings = nullptr);
// Written to a temporary name and renamed: never a half-written file.
void write_png(const std::string& path, const Image& image);

}  // namespace dcae

// The codec: the bundle's graphs on a backend, and everything between them,
// in the order dcae_deploy/runtime/codec.py does it (which is dcae.model.DCAE's):
//
//   encoder: pad -> g_a -> h_a -> z symbols, z stream; z_hat by DECODING the
//            z stream -> h_s; then at the file's gain a (quality.hpp) per
//            slice i: slice_params_i -> scale index of scale * a,
//            round((y_i - mu) * a) -> / a + mu -> slice_lrp_i; all slices'
//            symbols in ONE rANS stream, in slice order, each slice
//            flattened C, H, W; portable files: once every slice's scales
//            are known, the threshold shifts giving the smallest side stream
//            are chosen, the indexes shifted, and the elements whose scale
//            (times a) is within the margin of a (shifted) index boundary go
//            to the side stream; then the y stream is coded with the shifted
//            indexes. Rate control repeats only the part after h_s, once per
//            gain it tries.
//   decoder: z stream -> z_hat -> h_s -> per slice: slice_params_i -> index
//            of scale * a (shifted and corrected from the side stream) ->
//            rANS decode -> / a + mu -> slice_lrp_i; check the stream ended
//            in sync -> g_s -> clamp to [0, 1] -> crop.
#include "dcae/codec.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <tuple>

#include "backend.hpp"
#include "bundle.hpp"
#include "container.hpp"
#include "entropy.hpp"
#include "errors.hpp"
#include "geometry.hpp"
#include "hashing.hpp"
#include "portable.hpp"
#include "quality.hpp"
#include "tiling.hpp"

namespace dcae {

// dcae_deploy.runtime.portable.DEFAULT_MARGIN: 4x the largest scale difference measured
// between two fp32 setups near an index boundary
// (benchmarks/results/sigma_agreement.md).
const double kDefaultPortableMargin = 4.1e-5;

namespace {

// dcae_deploy.runtime.portable.margin_covers: whether a file's margin covers two setups
// that each keep within `bound`; the margin travels as a float32, so a value
// written as 2 x bound may read back a hair under it.
bool margin_covers(double margin, double bound) { return margin >= 2 * bound * (1 - 1.0 / (1 << 20)); }

}  // namespace

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::array<uint8_t, 16> first_16(const std::array<uint8_t, 32>& digest) {
  std::array<uint8_t, 16> out{};
  std::copy_n(digest.begin(), 16, out.begin());
  return out;
}

std::array<uint8_t, 16> from_hex16(const std::string& hex) {
  std::array<uint8_t, 16> out{};
  auto digit = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < 16; ++i) out[i] = static_cast<uint8_t>(digit(hex[2 * i]) * 16 + digit(hex[2 * i + 1]));
  return out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + ")";
}

// The latent's geometry for an image size.
struct Layout {
  uint32_t height, width, padded_height, padded_width;
  int64_t latent_channels, h, w, zh, zw, slice_channels, num_slices;
  size_t plane() const { return static_cast<size_t>(h * w); }
  size_t latent_size() const { return static_cast<size_t>(latent_channels) * plane(); }
  size_t slice_size() const { return static_cast<size_t>(slice_channels) * plane(); }
  std::vector<int64_t> latent_shape() const { return {1, latent_channels, h, w}; }
  std::vector<int64_t> slice_shape() const { return {1, slice_channels, h, w}; }
};

}  // namespace

struct Codec::Impl {
  Bundle bundle;
  std::unique_ptr<Backend> backend;
  Options options;
  std::array<uint8_t, 16> setup_fingerprint{};
  CriticalValues critical;
  std::map<std::string, std::unique_ptr<GraphSession>> sessions;
  Timings timings;
  std::vector<std::string> warnings;

  Impl(Bundle opened, const Options& chosen)
      : bundle(std::move(opened)), backend(make_backend(chosen.backend, chosen.threads)), options(chosen),
        critical(bundle.scale_table) {
    // dcae_deploy.runtime.codec.setup_fingerprint: the bundle's entropy path and the
    // arithmetic that ran it.
    setup_fingerprint = first_16(sha256_bytes(bundle.entropy_fingerprint + ":" + backend->numeric_class()));
    // The opening's warnings, until the first call replaces them.
    if (const std::string problem = backend->bundle_warning(bundle); !problem.empty()) warnings.push_back(problem);
  }

  Layout layout(uint32_t height, uint32_t width) const {
    const uint32_t ph = padded_side(height), pw = padded_side(width);
    return {height, width, ph, pw,
            bundle.latent_channels, ph / kYDownsample, pw / kYDownsample, ph / kZDownsample, pw / kZDownsample,
            bundle.slice_channels(), bundle.num_slices};
  }

  void add_timing(const std::string& stage, double seconds) {
    for (auto& entry : timings)
      if (entry.first == stage) {
        entry.second += seconds;
        return;
      }
    timings.emplace_back(stage, seconds);
  }

  template <typename Work>
  auto timed(const std::string& stage, Work work) {
    const Clock::time_point start = Clock::now();
    struct Stop {
      Impl* impl;
      const std::string& stage;
      Clock::time_point start;
      ~Stop() { impl->add_timing(stage, seconds_since(start)); }
    } stop{this, stage, start};
    return work();
  }

  // Loaded on first use: a decode-only host never loads g_a and h_a.
  GraphSession& session(const std::string& name) {
    auto found = sessions.find(name);
    if (found != sessions.end()) return *found->second;
    std::unique_ptr<GraphSession> loaded = backend->load(bundle.graphs.at(name), bundle.graph_path(name));
    return *sessions.emplace(name, std::move(loaded)).first->second;
  }

  std::map<std::string, Tensor> run(const std::string& name, const std::vector<TensorInput>& inputs) {
    GraphSession& graph = session(name);
    const double compile_seconds = graph.prepare(inputs);
    if (compile_seconds > 0) add_timing("compile", compile_seconds);
    return timed(name, [&] { return graph.run(inputs); });
  }

  // A graph returning another shape than the contract says is a broken bundle.
  static const Tensor& expect(const std::map<std::string, Tensor>& outputs, const std::string& graph,
                              const std::string& output, const std::vector<int64_t>& shape) {
    auto found = outputs.find(output);
    if (found == outputs.end()) fail(ErrorKind::backend, "graph " + graph + " returned no " + output);
    if (found->second.shape != shape)
      fail(ErrorKind::backend, "graph " + graph + " returned shape " + shape_text(found->second.shape) + " for " +
                                   output + ", expected " + shape_text(shape));
    return found->second;
  }

  // slice_params_i on the hyper-synthesis output and the slices decoded so far.
  std::map<std::string, Tensor> slice_params(int i, const Layout& g, const Tensor& scales, const Tensor& means,
                                             const std::vector<float>& y_hat) {
    std::vector<TensorInput> inputs = {{"latent_scales", scales.data.data(), scales.shape},
                                       {"latent_means", means.data.data(), means.shape}};
    // Batch 1: the first c*i channels are one contiguous block.
    if (i) inputs.push_back({"y_hat_prev", y_hat.data(), {1, g.slice_channels * i, g.h, g.w}});
    const std::string name = "slice_params_" + std::to_string(i);
    std::map<std::string, Tensor> out = run(name, inputs);
    expect(out, name, "mu", g.slice_shape());
    expect(out, name, "scale", g.slice_shape());
    if (!out.count("support")) fail(ErrorKind::backend, "graph " + name + " returned no support");
    return out;
  }

  void slice_refine(int i, const Layout& g, const Tensor& support, const std::vector<float>& y_hat_raw,
                    std::vector<float>* y_hat) {
    const std::string name = "slice_lrp_" + std::to_string(i);
    const std::map<std::string, Tensor> out =
        run(name, {{"support", support.data.data(), support.shape}, {"y_hat_raw", y_hat_raw.data(), g.slice_shape()}});
    const Tensor& refined = expect(out, name, "y_hat", g.slice_shape());
    std::copy(refined.data.begin(), refined.data.end(), y_hat->begin() + static_cast<std::ptrdiff_t>(i * g.slice_size()));
  }

  // The slice loop of both directions: per slice, slice_params_i, then
  // `code(offset, mu, scale, y_hat_raw)` (the entropy coding, which fills the
  // slice's y_hat_raw), then slice_lrp_i into y_hat.
  template <typename Code>
  void slice_loop(const Layout& g, const Tensor& scales, const Tensor& means, std::vector<float>* y_hat, Code code) {
    const size_t block = g.slice_size();
    y_hat->resize(g.latent_size());
    std::vector<float> y_hat_raw(block);
    for (int i = 0; i < g.num_slices; ++i) {
      const std::map<std::string, Tensor> params = slice_params(i, g, scales, means, *y_hat);
      timed("slice_coding_" + std::to_string(i), [&] {
        code(i * block, params.at("mu").data.data(), params.at("scale").data.data(), y_hat_raw.data());
      });
      slice_refine(i, g, params.at("support"), y_hat_raw, y_hat);
    }
  }

  // The plan g_a or g_s runs with on this image (dcae_deploy.runtime.tiling.ImageTransforms.plan):
  // under a memory limit, within what is left of it beside what the process
  // holds now. The graph is loaded first, so that its weights count among
  // what is held. `input_held` false: a check before the input exists (it
  // counts beside the tile then).
  TilePlan transform_plan(const std::string& graph, const Layout& g, bool input_held = true) {
    if (options.memory_limit) session(graph);
    return bundle_transform_plan(bundle, graph, g.h, g.w, options.memory_limit, resident_memory(), input_held);
  }

  // g_a (x -> y, scale 16 -> 1) or g_s (y_hat -> x_hat, 1 -> 16) over
  // `source`, (1, in_channels, h * scale_in, w * scale_in) float32, as `plan`
  // cuts it: each tile's input copied out, the graph run on it, and only its
  // interior written into the whole-image output.
  Tensor transform(const std::string& graph, const TilePlan& plan, const float* source, int64_t in_channels,
                   int64_t out_channels, int64_t scale_in, int64_t scale_out, TransformTiles* used) {
    const std::string input = graph == "g_a" ? "x" : "y_hat", output = graph == "g_a" ? "y" : "x_hat";
    const int64_t in_h = plan.height * scale_in, in_w = plan.width * scale_in;
    const int64_t out_h = plan.height * scale_out, out_w = plan.width * scale_out;
    *used = {plan.count(), plan.tile_height, plan.tile_width};
    if (plan.whole()) {
      std::map<std::string, Tensor> out = run(graph, {{input, source, {1, in_channels, in_h, in_w}}});
      expect(out, graph, output, {1, out_channels, out_h, out_w});
      return std::move(out.at(output));
    }
    Tensor whole;
    whole.shape = {1, out_channels, out_h, out_w};
    whole.data.resize(static_cast<size_t>(out_channels * out_h * out_w));
    const int64_t tile_in_h = plan.tile_height * scale_in, tile_in_w = plan.tile_width * scale_in;
    const int64_t tile_out_h = plan.tile_height * scale_out, tile_out_w = plan.tile_width * scale_out;
    std::vector<float> piece(static_cast<size_t>(in_channels * tile_in_h * tile_in_w));
    const auto at = [](int64_t channel, int64_t row, int64_t col, int64_t height, int64_t width) {
      return static_cast<size_t>((channel * height + row) * width + col);
    };
    for (const Span& row : plan.rows)
      for (const Span& col : plan.cols) {
        for (int64_t c = 0; c < in_channels; ++c)
          for (int64_t r = 0; r < tile_in_h; ++r)
            std::copy_n(source + at(c, row.origin * scale_in + r, col.origin * scale_in, in_h, in_w), tile_in_w,
                        piece.data() + at(c, r, 0, tile_in_h, tile_in_w));
        const std::map<std::string, Tensor> out =
            run(graph, {{input, piece.data(), {1, in_channels, tile_in_h, tile_in_w}}});
        const Tensor& tile = expect(out, graph, output, {1, out_channels, tile_out_h, tile_out_w});
        const int64_t first_col = (col.start - col.origin) * scale_out, cols = (col.end - col.start) * scale_out;
        for (int64_t c = 0; c < out_channels; ++c)
          for (int64_t r = row.start * scale_out; r < row.end * scale_out; ++r)
            std::copy_n(tile.data.data() + at(c, r - row.origin * scale_out, first_col, tile_out_h, tile_out_w), cols,
                        whole.data.data() + at(c, r, col.start * scale_out, out_h, out_w));
      }
    return whole;
  }

  std::pair<Tensor, Tensor> hyper_synthesis(const Layout& g, const std::vector<float>& z_hat) {
    std::map<std::string, Tensor> out = run("h_s", {{"z_hat", z_hat.data(), {1, bundle.z_channels, g.zh, g.zw}}});
    expect(out, "h_s", "latent_scales", g.latent_shape());
    expect(out, "h_s", "latent_means", g.latent_shape());
    return {std::move(out.at("latent_scales")), std::move(out.at("latent_means"))};
  }

  // Portable where the setup allows, as dcae_deploy.runtime.codec: the bundle's entropy
  // path is fp32 (then the exporter recorded the entropy model's fingerprint).
  bool writes_portable() {
    if (!options.portable) return false;
    if (bundle.entropy_model_fingerprint.empty()) {
      if (!bundle.reduced_precision_entropy)
        warnings.push_back("the bundle predates portable files (no entropy_model_fingerprint): the file decodes "
                           "only on the " + backend->numeric_class() + " backend class; re-export the bundle");
      return false;
    }
    return true;
  }

  // The margin as the file stores it (float32), which is what the encoder
  // marks with and every decoder reads.
  float portable_margin() const {
    const float margin = static_cast<float>(options.margin == 0.0 ? bundle.portable_margin : options.margin);
    if (!(margin > 0.0f && margin <= kMaxPortableMargin))
      fail(ErrorKind::bad_input, "portable margin must be in (0, 0.01], got " + std::to_string(options.margin));
    const double bound = backend->scale_error_bound();
    if (!margin_covers(margin, bound))
      fail(ErrorKind::fingerprint, "margin " + std::to_string(margin) + " is under twice the " + backend->name() +
                                       " backend's scale error bound (" + std::to_string(bound) +
                                       "): its scales could cross an index boundary the encoder did not list");
    return margin;
  }

  // What an encode computes once whatever the gain (dcae_deploy.runtime.codec.Codec.analyse):
  // the image through g_a and h_a, the z stream, and h_s's scales and means.
  struct Analysis {
    Layout g;
    bool portable;
    float margin;  // the portable margin as the file stores it; 0 for other files
    Tensor y, scales, means;
    std::vector<uint8_t> z_stream;
    std::vector<int32_t> z_symbols;
    TransformTiles analysis_tiles;
  };

  Analysis analyse(const Image& image) {
    if (const std::string problem = dimension_problem(image.height, image.width); !problem.empty())
      fail(ErrorKind::bad_input, problem);
    if (image.rgb.size() != size_t{image.height} * image.width * 3)
      fail(ErrorKind::bad_input, "image of " + std::to_string(image.height) + "x" + std::to_string(image.width) +
                                     " has " + std::to_string(image.rgb.size()) + " bytes of pixels, not H*W*3");
    const bool portable = writes_portable();
    const float margin = portable ? portable_margin() : 0.0f;
    const Layout g = layout(image.height, image.width);
    // Checked before anything of the image's size is allocated: a limit too
    // small for even the input is refused at once; the plan g_a runs with is
    // made with the padded input held.
    if (options.memory_limit) transform_plan("g_a", g, false);
    TransformTiles analysis_tiles;

    std::vector<float> x = timed("pad", [&] { return pad(image, g); });
    const TilePlan analysis_plan = transform_plan("g_a", g);
    Tensor y = transform("g_a", analysis_plan, x.data(), 3, g.latent_channels, kYDownsample, 1, &analysis_tiles);
    std::map<std::string, Tensor> ha = run("h_a", {{"y", y.data.data(), y.shape}});
    const Tensor& z = expect(ha, "h_a", "z", {1, bundle.z_channels, g.zh, g.zw});

    Analysis analysis{g, portable, margin, {}, {}, {}, {}, {}, analysis_tiles};
    std::vector<float> z_hat;
    timed("z_coding", [&] {
      analysis.z_stream =
          compress_z(z.data.data(), static_cast<size_t>(g.zh * g.zw), bundle.z, &analysis.z_symbols);
      // As the reference: z_hat comes from decoding the stream, which also
      // proves the stream decodes.
      z_hat = decompress_z(analysis.z_stream.data(), analysis.z_stream.size(), static_cast<size_t>(g.zh * g.zw),
                           bundle.z);
    });
    std::tie(analysis.scales, analysis.means) = hyper_synthesis(g, z_hat);
    analysis.y = std::move(y);
    return analysis;
  }

  // The slice loop and the entropy coding of an analysed image at a gain
  // code (dcae_deploy.runtime.codec.Codec.code): indexes of sigma * a,
  // symbols round((y - mu) * a), y_hat_raw = symbols / a + mu.
  EncodeResult code(const Analysis& analysis, uint16_t gain_code) {
    const Layout& g = analysis.g;
    const bool portable = analysis.portable;
    const float gain = gain_of(gain_code);
    EncodeResult result;
    result.height = g.height;
    result.width = g.width;
    result.latent_shape = {1, g.latent_channels, g.h, g.w};
    result.analysis_tiles = analysis.analysis_tiles;
    result.z_symbols = analysis.z_symbols;
    result.gain_code = gain_code;
    result.symbols.resize(g.latent_size());
    result.indexes.resize(g.latent_size());
    // The coded scales: the whole latent's for the side stream, else one slice's.
    std::vector<float> latent_scales(portable ? g.latent_size() : g.slice_size());
    slice_loop(g, analysis.scales, analysis.means, &result.y_hat,
               [&](size_t offset, const float* mu, const float* scale, float* y_hat_raw) {
      const size_t block = g.slice_size();
      float* coded = latent_scales.data() + (portable ? offset : 0);
      coded_scales(scale, block, gain, coded);
      build_indexes(coded, block, bundle.scale_table, result.indexes.data() + offset);
      quantize(analysis.y.data.data() + offset, mu, block, result.symbols.data() + offset, gain);
      dequantize(result.symbols.data() + offset, mu, block, y_hat_raw, gain);
    });
    std::vector<uint8_t> side_stream;
    if (portable) {
      // The shifts are chosen on the whole latent: the indexes become the
      // shifted ones, which the y symbols are coded with.
      PortableEncoding encoding = timed("side_stream", [&] {
        return encode_portable(latent_scales.data(), result.indexes.data(), g.latent_size(), g.plane(),
                               analysis.margin, critical);
      });
      side_stream = std::move(encoding.side);
      result.marked = encoding.listed;
      result.threshold_shifts = encoding.shifts.count;
      result.shift_block = encoding.shifts.count > 1 ? encoding.shifts.block : 0;
    }
    // Slices are channel blocks, so C order over the whole latent is slice
    // order with each slice flattened C, H, W.
    const std::vector<uint8_t> y_stream = timed("y_coding", [&] {
      return rans_encode(result.symbols.data(), result.indexes.data(), result.symbols.size(), bundle.gaussian);
    });

    FileHeader header;
    header.height = g.height;
    header.width = g.width;
    header.reduced_precision_entropy = bundle.reduced_precision_entropy;
    header.portable = portable;
    header.fingerprint = portable ? from_hex16(bundle.entropy_model_fingerprint) : setup_fingerprint;
    header.margin = analysis.margin;
    header.gain_code = gain_code;
    result.file = pack_dcae(header, analysis.z_stream, y_stream, side_stream);
    return result;
  }

  // The image at the rate chosen: a quality's gain code, or rate control's
  // search over gain codes on one analysis, keeping the best fitting try.
  EncodeResult encode(const Image& image, const RateChoice& rate) {
    timings.clear();
    warnings.clear();
    const Clock::time_point started = Clock::now();
    check_rate_choice(rate);
    const Analysis analysis = analyse(image);
    EncodeResult result;
    if (!rate.max_bytes && !rate.target_bpp) {
      result = code(analysis, bundle.rate_levels.gain_code(rate.quality.value_or(kDefaultQuality)));
    } else {
      const RateTarget target = rate.max_bytes ? bytes_target(*rate.max_bytes)
                                               : bpp_target(*rate.target_bpp, image.height, image.width);
      std::optional<EncodeResult> kept;
      const auto size_at = [&](uint16_t gain_code) -> uint64_t {
        EncodeResult tried = code(analysis, gain_code);
        const uint64_t size = tried.file.size();
        if (size <= target.max_bytes &&
            (!kept || better_fit(size, gain_code, kept->file.size(), kept->gain_code)))
          kept = std::move(tried);
        return size;
      };
      const RateSearch search = search_gain_code(size_at, target, bundle.rate_levels.code_range());
      result = kept && kept->gain_code == search.gain_code ? std::move(*kept) : code(analysis, search.gain_code);
      result.rate_tries = search.tries;
    }
    add_timing("total", seconds_since(started));
    return result;
  }

  // uint8 (H, W, 3) -> float32 (1, 3, Hp, Wp) in [0, 1], centred zero padding.
  static std::vector<float> pad(const Image& image, const Layout& g) {
    const Padding p = padding_for(image.height, image.width);
    std::vector<float> x(size_t{3} * g.padded_height * g.padded_width, 0.0f);
    for (uint32_t c = 0; c < 3; ++c)
      for (uint32_t r = 0; r < image.height; ++r) {
        float* row = x.data() + (size_t{c} * g.padded_height + p.top + r) * g.padded_width + p.left;
        const uint8_t* source = image.rgb.data() + size_t{r} * image.width * 3 + c;
        for (uint32_t col = 0; col < image.width; ++col) row[col] = static_cast<float>(source[3 * col]) / 255.0f;
      }
    return x;
  }

  // float (1, 3, Hp, Wp) -> uint8 (H, W, 3): clamp to [0, 1] as the reference
  // does, then round(x * 255) with halves to even, as numpy.
  static Image crop(const std::vector<float>& x_hat, const Layout& g) {
    const Padding p = padding_for(g.height, g.width);
    Image image;
    image.height = g.height;
    image.width = g.width;
    image.rgb.resize(size_t{g.height} * g.width * 3);
    for (uint32_t c = 0; c < 3; ++c)
      for (uint32_t r = 0; r < g.height; ++r) {
        const float* row = x_hat.data() + (size_t{c} * g.padded_height + p.top + r) * g.padded_width + p.left;
        uint8_t* target = image.rgb.data() + size_t{r} * g.width * 3 + c;
        for (uint32_t col = 0; col < g.width; ++col) {
          const float clamped = std::isnan(row[col]) ? 0.0f : std::min(std::max(row[col], 0.0f), 1.0f);
          target[3 * col] = static_cast<uint8_t>(std::nearbyint(clamped * 255.0f));
        }
      }
    return image;
  }

  struct Streams {
    ByteSpan y, z;
    uint32_t height, width;
    bool portable = false;
    double margin = 0;
    ByteSpan side;
    uint16_t gain_code = kGainCodeOne;
  };

  DecodeResult decode_streams(const Streams& streams, bool synthesize) {
    const Layout g = layout(streams.height, streams.width);
    DecodeResult result;
    result.latent_shape = {1, g.latent_channels, g.h, g.w};
    // z is tiny (1/64 of each side) and is checked for sync before anything
    // of the image's size is allocated or run.
    const std::vector<float> z_hat = timed("z_coding", [&] {
      return decompress_z(streams.z.data, streams.z.size, static_cast<size_t>(g.zh * g.zw), bundle.z);
    });
    // The side stream is parsed and checked (its shifts against the margin)
    // before anything of the image's size is run.
    std::optional<PortableDecoding> portable;
    if (streams.portable)
      timed("side_stream", [&] {
        portable.emplace(streams.side.data, streams.side.size, g.latent_size(), critical, streams.margin);
      });
    // The plan g_s runs with is made after the slice loop, with what that
    // leaves held (y_hat, the symbols, the entropy graphs): a check before it
    // would name a limit too small.
    const auto [scales, means] = hyper_synthesis(g, z_hat);

    result.symbols.resize(g.latent_size());
    std::vector<int32_t> indexes(g.slice_size());
    std::vector<float> coded(g.slice_size());
    const float gain = gain_of(streams.gain_code);
    RansDecoder decoder(streams.y.data, streams.y.size);
    slice_loop(g, scales, means, &result.y_hat, [&](size_t offset, const float* mu, const float* scale, float* y_hat_raw) {
      const size_t block = g.slice_size();
      // The encoder's indexes and side stream are of the scales times the gain.
      coded_scales(scale, block, gain, coded.data());
      build_indexes(coded.data(), block, bundle.scale_table, indexes.data());
      if (portable) portable->apply(offset, coded.data(), indexes.data(), block);
      decoder.decode(indexes.data(), block, bundle.gaussian, result.symbols.data() + offset);
      dequantize(result.symbols.data() + offset, mu, block, y_hat_raw, gain);
    });
    timed("y_coding", [&] { decoder.finish(); });
    result.image.height = streams.height;
    result.image.width = streams.width;
    if (!synthesize) return result;

    const TilePlan synthesis_plan = transform_plan("g_s", g);
    const Tensor x_hat = transform("g_s", synthesis_plan, result.y_hat.data(), g.latent_channels, 3, 1,
                                   kYDownsample, &result.synthesis_tiles);
    result.image = timed("crop", [&] { return crop(x_hat.data, g); });
    return result;
  }

  DecodeResult decode(const std::vector<uint8_t>& file, bool force, bool synthesize) {
    timings.clear();
    warnings.clear();
    const Clock::time_point started = Clock::now();
    Streams streams;
    if (sniff(file.data(), file.size()) == FileKind::bin) {
      const BinFile bin = unpack_bin(file.data(), file.size());
      warnings.push_back("upstream .bin file: it carries no fingerprint, and a stream written by another setup "
                         "(PyTorch, another backend or precision) may not decode");
      streams.y = bin.y;
      streams.z = bin.z;
      streams.height = bin.height;
      streams.width = bin.width;
    } else {
      // Not a .bin: unpack checks it is a .dcae and says what it is if not.
      const DcaeFile parsed = unpack_dcae(file.data(), file.size());
      const FileHeader& header = parsed.header;
      check_fingerprint(header, force);
      streams.y = parsed.y;
      streams.z = parsed.z;
      streams.height = header.height;
      streams.width = header.width;
      streams.portable = header.portable;
      streams.margin = header.margin;
      streams.side = parsed.side;
      streams.gain_code = header.gain_code;
    }
    if (const std::string problem = dimension_problem(streams.height, streams.width); !problem.empty())
      fail(ErrorKind::corrupt_stream, "stream header has an impossible image size: " + problem);
    DecodeResult result = decode_streams(streams, synthesize);
    add_timing("total", seconds_since(started));
    return result;
  }

  // dcae_deploy.runtime.codec: a portable file decodes when written with this bundle's
  // entropy model and its margin covers this backend's error bound; another
  // file only on the setup that wrote it. `force` tries anyway where it can.
  void check_fingerprint(const FileHeader& header, bool force) {
    std::string problem;
    bool forcible = true;
    if (header.portable) {
      const double bound = backend->scale_error_bound();
      if (bundle.entropy_model_fingerprint.empty()) {
        problem = "this bundle reads no portable file (its entropy path is not fp32, or it predates portable "
                  "files: re-export it)";
        forcible = false;
      } else if (header.fingerprint != from_hex16(bundle.entropy_model_fingerprint)) {
        problem = "file was written with another entropy model (fingerprint " + to_hex(header.fingerprint.data(), 16) +
                  ", this bundle's is " + bundle.entropy_model_fingerprint + ")";
      } else if (!margin_covers(header.margin, bound)) {
        problem = "the file's margin " + std::to_string(header.margin) + " is under twice the " + backend->name() +
                  " backend's scale error bound (" + std::to_string(bound) + ")";
      }
    } else if (header.fingerprint != setup_fingerprint) {
      problem = "file was written by another bundle, backend or precision (fingerprint " +
                to_hex(header.fingerprint.data(), 16) + ", this decoder's is " + to_hex(setup_fingerprint.data(), 16) +
                "); decode it with the setup that wrote it";
    }
    if (problem.empty()) return;
    if (!force || !forcible) fail(ErrorKind::fingerprint, problem + (forcible ? "; force the attempt with --force" : ""));
    warnings.push_back(problem + ": decoding anyway (forced); it may fail with a desync");
  }
};

Codec::Codec(const std::string& bundle_dir, const Options& options)
    : impl_(std::make_unique<Impl>(Bundle::open(bundle_dir), options)) {}
Codec::~Codec() = default;
Codec::Codec(Codec&&) noexcept = default;
Codec& Codec::operator=(Codec&&) noexcept = default;

std::vector<uint8_t> Codec::compress(const Image& image, const RateChoice& rate) {
  return impl_->encode(image, rate).file;
}
Image Codec::decompress(const std::vector<uint8_t>& file, bool force) {
  return impl_->decode(file, force, true).image;
}
EncodeResult Codec::encode(const Image& image, const RateChoice& rate) { return impl_->encode(image, rate); }
DecodeResult Codec::decode(const std::vector<uint8_t>& file, bool force, bool synthesize) {
  return impl_->decode(file, force, synthesize);
}
const Timings& Codec::last_timings() const { return impl_->timings; }
std::string Codec::numeric_class() const { return impl_->backend->numeric_class(); }
const std::vector<std::string>& Codec::last_warnings() const { return impl_->warnings; }

}  // namespace dcae

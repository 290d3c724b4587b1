#include "dcae/c_api.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <sstream>
#include <string>

#include "dcae/codec.hpp"

struct dcae_codec {
  dcae::Codec codec;
  std::string error, error_kind, timings, warnings, numeric_class;
};

namespace {

struct Free {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Buffer = std::unique_ptr<T, Free>;

// A malloc'd copy, so that callers in any language can free it with
// dcae_free; owned here until every output of a call is ready.
template <typename T>
Buffer<T> copy_out(const std::vector<T>& data) {
  Buffer<T> out(static_cast<T*>(std::malloc(data.empty() ? 1 : data.size() * sizeof(T))));
  if (!out) throw std::bad_alloc();
  if (!data.empty()) std::memcpy(out.get(), data.data(), data.size() * sizeof(T));
  return out;
}

void record_call(dcae_codec* c) {
  std::ostringstream json;
  json << "{";
  bool first = true;
  for (const auto& [stage, seconds] : c->codec.last_timings()) {
    json << (first ? "" : ", ") << "\"" << stage << "\": " << 1e3 * seconds;
    first = false;
  }
  json << "}";
  c->timings = json.str();
  c->warnings.clear();
  for (const std::string& w : c->codec.last_warnings()) c->warnings += (c->warnings.empty() ? "" : "\n") + w;
}

// Runs `work`, turning any exception into -1 and a one-line error.
template <typename Work>
int guarded(dcae_codec* c, Work work) {
  if (!c) return -1;
  c->error.clear();
  c->error_kind.clear();
  try {
    work();
    record_call(c);
    return 0;
  } catch (const dcae::Error& e) {
    static const char* const kKinds[] = {"bad_input", "corrupt_stream", "desync", "fingerprint", "bundle", "backend", "io"};
    c->error = e.what();
    c->error_kind = kKinds[static_cast<int>(e.kind())];
    return -1;
  } catch (const std::bad_alloc&) {
    c->error = "out of memory";
  } catch (const std::exception& e) {
    c->error = e.what();
  } catch (...) {
    c->error = "internal error (unknown exception)";
  }
  return -1;
}

}  // namespace

extern "C" {

dcae_codec* dcae_open(const char* bundle_dir, const char* backend, int threads, char* error, size_t error_size) {
  std::string reason;
  try {
    dcae::Options options;
    if (backend) options.backend = backend;
    options.threads = threads;
    auto* c = new dcae_codec{dcae::Codec(bundle_dir ? bundle_dir : "", options), {}, {}, {}, {}, {}};
    c->numeric_class = c->codec.numeric_class();
    record_call(c);  // the opening's warnings
    return c;
  } catch (const std::exception& e) {
    reason = e.what();
  } catch (...) {
    reason = "internal error (unknown exception)";
  }
  if (error && error_size) std::snprintf(error, error_size, "%s", reason.c_str());
  return nullptr;
}

void dcae_close(dcae_codec* codec) { delete codec; }

int dcae_encode(dcae_codec* codec, const uint8_t* rgb, uint32_t height, uint32_t width, uint8_t** file,
                size_t* file_size, int32_t** symbols, int32_t** indexes, size_t* count) {
  return dcae_encode_rate(codec, rgb, height, width, -1.0, 0, 0.0, nullptr, file, file_size, symbols, indexes, count);
}

int dcae_encode_rate(dcae_codec* codec, const uint8_t* rgb, uint32_t height, uint32_t width, double quality,
                     uint64_t max_bytes, double target_bpp, uint16_t* gain_code, uint8_t** file, size_t* file_size,
                     int32_t** symbols, int32_t** indexes, size_t* count) {
  return guarded(codec, [&] {
    dcae::Image image;
    image.height = height;
    image.width = width;
    image.rgb.assign(rgb, rgb + size_t{height} * width * 3);
    dcae::RateChoice rate;
    if (!(quality < 0)) rate.quality = quality;  // NaN is given, and refused
    if (max_bytes) rate.max_bytes = max_bytes;
    if (target_bpp != 0.0) rate.target_bpp = target_bpp;
    const dcae::EncodeResult result = codec->codec.encode(image, rate);
    Buffer<uint8_t> file_copy = copy_out(result.file);
    if (symbols && indexes && count) {
      Buffer<int32_t> symbols_copy = copy_out(result.symbols), indexes_copy = copy_out(result.indexes);
      *symbols = symbols_copy.release();
      *indexes = indexes_copy.release();
      *count = result.symbols.size();
    }
    *file = file_copy.release();
    *file_size = result.file.size();
    if (gain_code) *gain_code = result.gain_code;
  });
}

int dcae_decode(dcae_codec* codec, const uint8_t* file, size_t file_size, int force, uint8_t** rgb,
                uint32_t* height, uint32_t* width, int32_t** symbols, size_t* count) {
  return guarded(codec, [&] {
    const dcae::DecodeResult result = codec->codec.decode(std::vector<uint8_t>(file, file + file_size), force != 0);
    Buffer<uint8_t> rgb_copy = copy_out(result.image.rgb);
    if (symbols && count) {
      *symbols = copy_out(result.symbols).release();
      *count = result.symbols.size();
    }
    *rgb = rgb_copy.release();
    *height = result.image.height;
    *width = result.image.width;
  });
}

int dcae_read_symbols(dcae_codec* codec, const uint8_t* file, size_t file_size, int force, uint32_t* height,
                      uint32_t* width, int32_t** symbols, size_t* count) {
  return guarded(codec, [&] {
    const dcae::DecodeResult result =
        codec->codec.decode(std::vector<uint8_t>(file, file + file_size), force != 0, /*synthesize=*/false);
    *symbols = copy_out(result.symbols).release();
    *count = result.symbols.size();
    *height = result.image.height;
    *width = result.image.width;
  });
}

const char* dcae_error(const dcae_codec* codec) { return codec ? codec->error.c_str() : "no codec"; }
const char* dcae_error_kind(const dcae_codec* codec) { return codec ? codec->error_kind.c_str() : ""; }
const char* dcae_timings_json(const dcae_codec* codec) { return codec ? codec->timings.c_str() : "{}"; }
const char* dcae_warnings(const dcae_codec* codec) { return codec ? codec->warnings.c_str() : ""; }
const char* dcae_numeric_class(const dcae_codec* codec) { return codec ? codec->numeric_class.c_str() : ""; }
void dcae_free(void* buffer) { std::free(buffer); }

}  // extern "C"

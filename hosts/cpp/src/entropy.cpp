#include "entropy.hpp"

#include <algorithm>
#include <cmath>

#include "errors.hpp"

namespace dcae {

void build_indexes(const float* scales, size_t count, const ScaleTable& table, int32_t* indexes) {
  const float* first = table.scales.data();
  const float* last = first + table.scales.size() - 1;  // table[:-1]
  for (size_t i = 0; i < count; ++i) {
    const float s = scales[i];
    if (std::isnan(s)) {
      indexes[i] = static_cast<int32_t>(last - first);
      continue;
    }
    const float bounded = s < table.bound ? table.bound : s;
    indexes[i] = static_cast<int32_t>(std::lower_bound(first, last, bounded) - first);
  }
}

void coded_scales(const float* scales, size_t count, float gain, float* coded) {
  for (size_t i = 0; i < count; ++i) coded[i] = scales[i] * gain;
}

void quantize(const float* y, const float* mu, size_t count, int32_t* symbols, float gain) {
  constexpr float kMaxAbsSymbol = 1073741824.0f;  // 2^30
  for (size_t i = 0; i < count; ++i) {
    // Two float32 roundings, as numpy: the difference, then its product.
    const float centred = y[i] - mu[i];
    // nearbyint in the default rounding mode: halves to even, as np.round.
    const float rounded = std::nearbyint(centred * gain);
    if (!(std::fabs(rounded) < kMaxAbsSymbol)) fail(ErrorKind::bad_input, "latent holds a non-finite or out-of-range value");
    symbols[i] = static_cast<int32_t>(rounded);
  }
}

void dequantize(const int32_t* symbols, const float* mu, size_t count, float* values, float gain) {
  for (size_t i = 0; i < count; ++i) {
    const float scaled = static_cast<float>(symbols[i]) / gain;
    values[i] = scaled + mu[i];
  }
}

namespace {

// Every value of channel c uses table c, in C, H, W order.
std::vector<int32_t> channel_indexes(size_t channels, size_t plane_size) {
  std::vector<int32_t> indexes(channels * plane_size);
  for (size_t c = 0; c < channels; ++c)
    std::fill_n(indexes.begin() + static_cast<std::ptrdiff_t>(c * plane_size), plane_size, static_cast<int32_t>(c));
  return indexes;
}

std::vector<float> channel_planes(const std::vector<float>& medians, size_t plane_size) {
  std::vector<float> planes(medians.size() * plane_size);
  for (size_t c = 0; c < medians.size(); ++c)
    std::fill_n(planes.begin() + static_cast<std::ptrdiff_t>(c * plane_size), plane_size, medians[c]);
  return planes;
}

}  // namespace

std::vector<uint8_t> compress_z(const float* z, size_t plane_size, const ZTables& tables,
                                std::vector<int32_t>* symbols) {
  const size_t count = tables.medians.size() * plane_size;
  const std::vector<float> medians = channel_planes(tables.medians, plane_size);
  symbols->resize(count);
  quantize(z, medians.data(), count, symbols->data());
  const std::vector<int32_t> indexes = channel_indexes(tables.medians.size(), plane_size);
  return rans_encode(symbols->data(), indexes.data(), count, tables.cdfs);
}

std::vector<float> decompress_z(const uint8_t* data, size_t size, size_t plane_size, const ZTables& tables) {
  const size_t count = tables.medians.size() * plane_size;
  const std::vector<int32_t> indexes = channel_indexes(tables.medians.size(), plane_size);
  std::vector<int32_t> symbols(count);
  RansDecoder decoder(data, size);
  decoder.decode(indexes.data(), count, tables.cdfs, symbols.data());
  decoder.finish();
  const std::vector<float> medians = channel_planes(tables.medians, plane_size);
  std::vector<float> z_hat(count);
  dequantize(symbols.data(), medians.data(), count, z_hat.data());
  return z_hat;
}

}  // namespace dcae

// compressai's entropy-model arithmetic as dcae_deploy/runtime/entropy.py does it, on
// float32: scale -> table index, round(y - mu) half to even, symbols + mu,
// and the factorised coding of the hyper-latent z; with the quality knob's
// gain a (quality.hpp), indexes of sigma * a, round((y - mu) * a) and
// symbols / a + mu. Every step rounds to float32 on its own (no fused
// multiply-add), so at a = 1 it is exactly the arithmetic without a gain.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "rans.hpp"

namespace dcae {

// GaussianConditional's scale table (ascending, float32) and lower bound.
struct ScaleTable {
  std::vector<float> scales;
  float bound = 0.11f;
};

// index = number of table[0..L-2] entries below max(scale, bound)
// (numpy searchsorted(table[:-1], max(s, bound), "left")); NaN sorts last,
// to the top index, as in compressai.
void build_indexes(const float* scales, size_t count, const ScaleTable& table, int32_t* indexes);

// The scales a slice's symbols are coded with at gain a: float32(sigma * a).
void coded_scales(const float* scales, size_t count, float gain, float* coded);
// round((y - mu) * gain) with halves to even, as int32; Error(bad_input) for
// a non-finite or absurd value (|v| >= 2^30).
void quantize(const float* y, const float* mu, size_t count, int32_t* symbols, float gain = 1.0f);
// symbols / gain + mu in float32.
void dequantize(const int32_t* symbols, const float* mu, size_t count, float* values, float gain = 1.0f);

// EntropyBottleneck's tables: one CDF per channel, and the channel medians.
struct ZTables {
  CdfTables cdfs;
  std::vector<float> medians;
};

// z (1, C, h, w) float32 -> its rANS stream; the symbols go to `symbols`.
std::vector<uint8_t> compress_z(const float* z, size_t plane_size, const ZTables& tables,
                                std::vector<int32_t>* symbols);
// The stream -> z_hat (1, C, h, w); Error(desync / corrupt_stream) unless it
// decodes in sync.
std::vector<float> decompress_z(const uint8_t* data, size_t size, size_t plane_size, const ZTables& tables);

}  // namespace dcae

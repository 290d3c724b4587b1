// The portable side stream of a .dcae file (docs/dcae-format.md,
// dcae_deploy/runtime/portable.py): the encoder marks every element whose scale lies
// within a margin (natural log) of a value where the scale-table index
// changes, and records on which side its index fell; a decoder whose scales
// differ from the encoder's by less than the margin then recovers the
// encoder's indexes exactly, whatever backend computed them.
//
// Threshold shifts: the encoder moves the critical values of each block of B
// consecutive elements by step(k) * 2 margin (ln), k < K chosen per block
// (K up to 16, steps 0, +1, -1, +2, -2, ..., -7, +8), so that fewer elements
// lie near one. With a shift o > 0 the index of an element whose ln s lies in
// (ln c, ln c + o] is below(c); with o < 0 one in (ln c + o, ln c] takes
// above(c). The side stream holds the shifts, then the marked list.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "entropy.hpp"

namespace dcae {

// The values where the index changes: sorted unique table[0..L-2] entries
// >= bound, each with the index just below it and at or above it.
class CriticalValues {
 public:
  explicit CriticalValues(const ScaleTable& table);

  struct Nearest {
    size_t which;     // into values()
    double distance;  // |log_s - ln c|, float64 as dcae_deploy.runtime.portable computes it
  };
  // The critical value nearest to log_s (ln of a scale, less its shift) in
  // ln distance; the lower of two equally near ones (Thresholds.nearest).
  Nearest nearest_log(double log_s) const;

  // Thresholds.largest_shift_count: the largest K (a power of two, at most
  // kMaxShifts) whose largest shift, max |step(k)| * 2 margin for k < K,
  // stays under half the smallest spacing of the critical values' logs.
  unsigned largest_shift_count(double margin) const;

  // Thresholds.shift_indexes for one element (log_s finite): for shift > 0,
  // when the largest critical value c with ln c < log_s has
  // log_s - ln c <= shift, the index below c; for shift < 0, when the
  // smallest critical value c with ln c >= log_s has ln c - log_s < -shift,
  // the index above c; else `index`.
  int32_t shifted_index(double log_s, double shift, int32_t index) const;

  const std::vector<double>& values() const { return values_; }
  int32_t below(size_t which) const { return below_[which]; }
  int32_t above(size_t which) const { return above_[which]; }

 private:
  std::vector<double> values_, logs_;
  std::vector<int32_t> below_, above_;
};

// ln of a scale in float64, or NaN when it is not finite and positive
// (dcae_deploy.runtime.portable._log_scales).
double log_scale(float s);

constexpr unsigned kMaxShifts = 16;

// step(k) of choice k, in units of 2 margin (dcae_deploy.runtime.portable.SHIFT_STEPS):
// the smallest |shift| first, 0, +1, -1, +2, ..., -7, +8.
constexpr double shift_step(unsigned k) {
  return k % 2 ? static_cast<double>((k + 1) / 2) : -static_cast<double>(k / 2);
}

// dcae_deploy.runtime.portable.largest_step: max |step(k)| for k < count.
constexpr double largest_step(unsigned count) {
  double largest = 0.0;
  for (unsigned k = 0; k < count; ++k) {
    const double step = shift_step(k);
    const double size = step < 0 ? -step : step;
    if (size > largest) largest = size;
  }
  return largest;
}

// Per block of `block` consecutive latent positions, its choice k < count.
struct ThresholdShifts {
  unsigned count = 1;  // K, a power of two; 1: no shifts
  uint64_t block = 0;
  std::vector<uint8_t> choices;

  // The ln shift of the critical values at a latent position: step(choice) * (2.0 * margin).
  double offset(uint64_t position, double margin) const {
    return count == 1 ? 0.0 : shift_step(choices[position / block]) * (2.0 * margin);
  }
};

// Marked elements in increasing latent position (C order over (1, M, h, w)),
// and the shifts (count 1: none).
struct SideInfo {
  std::vector<uint64_t> positions;
  std::vector<uint8_t> bits;  // 0: the encoder's index was below(c), 1: above(c)
  ThresholdShifts shifts;
};

// Encoder without shifts: mark the elements of one slice (latent positions
// base..base+count).
void mark_slice(const float* scales, const int32_t* indexes, size_t count, uint64_t base, double margin,
                const CriticalValues& critical, SideInfo* side);

// The side stream's bytes: the shifts, then the marked list, whose Rice
// parameter is the one giving the fewest bits (the smallest such, as
// dcae_deploy.runtime.portable).
std::vector<uint8_t> encode_side_stream(const SideInfo& side, uint64_t latent_size);

// The latent's size when the model is not known (dcae-host inspect): the
// positions are then bounded by the shifts' blocks, or without shifts by the
// format's limit (dcae_deploy.runtime.portable.decode_side_stream with total None).
constexpr uint64_t kLatentSizeUnknown = 0;
// Parse and check a side stream for a latent of `latent_size` elements;
// Error(corrupt_stream), one line starting "side stream", for anything
// dcae_deploy.runtime.portable refuses. Nothing larger than the bytes can
// hold is allocated.
SideInfo decode_side_stream(const uint8_t* data, size_t size, uint64_t latent_size);

// dcae_deploy.runtime.portable.encode_portable: of the (1, C, h, w) latent's scales
// (`plane` = h * w) and their unshifted indexes, the threshold shifts whose
// side stream is the smallest, deterministically as the spec says; `indexes`
// become the shifted ones the y symbols are coded with.
struct PortableEncoding {
  std::vector<uint8_t> side;
  uint64_t listed = 0;  // elements in the marked list
  ThresholdShifts shifts;
};
PortableEncoding encode_portable(const float* scales, int32_t* indexes, size_t latent_size, size_t plane,
                                 double margin, const CriticalValues& critical);

// dcae_deploy.runtime.portable.PortableDecoding: parses the side stream up front (and
// refuses more shifts than the margin allows with this table), then gives
// each slice's indexes, computed by build_indexes from this decoder's
// scales, the file's shifts and listed sides, and checks every element
// against the margin. Error(desync) where the decoder's scales are not
// within the file's margin of the encoder's.
class PortableDecoding {
 public:
  PortableDecoding(const uint8_t* data, size_t size, uint64_t latent_size, const CriticalValues& critical,
                   double margin);
  // In place: the indexes of the elements at latent positions start..start+count-1.
  void apply(uint64_t start, const float* scales, int32_t* indexes, size_t count);
  const SideInfo& side() const { return side_; }

 private:
  const CriticalValues& critical_;
  double margin_;
  SideInfo side_;
};

}  // namespace dcae

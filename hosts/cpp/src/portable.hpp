// The portable side stream of .dcae version 2 (specs/dcae_v2.md,
// runtime/portable.py): the encoder marks every element whose scale lies
// within a margin (natural log) of a value where the scale-table index
// changes, and records on which side its index fell; a decoder whose scales
// differ from the encoder's by less than the margin then recovers the
// encoder's indexes exactly, whatever backend computed them.
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
    double distance;  // |ln s - ln c|, exact when below kFar, else some value >= kFar
  };
  // The critical value nearest to s (> 0, finite) in |ln| distance.
  Nearest nearest(double s) const;
  // Distances at or above this are reported inexactly: no margin reaches them.
  static constexpr double kFar = 0.04;

  const std::vector<double>& values() const { return values_; }
  int32_t below(size_t which) const { return below_[which]; }
  int32_t above(size_t which) const { return above_[which]; }

 private:
  std::vector<double> values_, logs_;
  std::vector<int32_t> below_, above_;
};

// Marked elements in increasing latent position (C order over (1, M, h, w)).
struct SideInfo {
  std::vector<uint64_t> positions;
  std::vector<uint8_t> bits;  // 0: the encoder's index was below(c), 1: above(c)
};

// Encoder: mark the elements of one slice (latent positions base..base+count).
void mark_slice(const float* scales, const int32_t* indexes, size_t count, uint64_t base, double margin,
                const CriticalValues& critical, SideInfo* side);

// The side stream's bytes (empty when nothing is marked). The Rice parameter
// is the one giving the fewest bits (the smallest such, as runtime.portable).
std::vector<uint8_t> encode_side_stream(const SideInfo& side);
// Parses and checks a side stream for a latent of `latent_size` elements;
// Error(corrupt_stream) with the reason for anything the spec refuses.
SideInfo decode_side_stream(const uint8_t* data, size_t size, uint64_t latent_size);

// Decoder: correct one slice's indexes (computed from the decoder's own
// scales) at the marked positions, and check the unmarked ones lie outside
// half the margin (the file is for setups within margin / 2 of float64).
// `cursor` walks side.positions across slices. Error(desync) where the
// decoder's scales are not within the file's margin of the encoder's.
void apply_side_info(const float* scales, int32_t* indexes, size_t count, uint64_t base, double margin,
                     const CriticalValues& critical, const SideInfo& side, size_t* cursor);

}  // namespace dcae

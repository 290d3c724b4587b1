#include "portable.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "errors.hpp"

namespace dcae {

CriticalValues::CriticalValues(const ScaleTable& table) {
  const size_t searched = table.scales.size() - 1;  // table[:-1], as build_indexes searches
  for (size_t i = 0; i < searched; ++i) {
    const float t = table.scales[i];
    if (t < table.bound) continue;
    const double c = t;
    if (!values_.empty() && values_.back() == c) continue;
    values_.push_back(c);
    logs_.push_back(std::log(c));
    int32_t below = 0, above = 0;
    for (size_t j = 0; j < searched; ++j) {
      below += table.scales[j] < t;
      above += table.scales[j] <= t;
    }
    below_.push_back(below);
    above_.push_back(above);
  }
}

CriticalValues::Nearest CriticalValues::nearest(double s) const {
  // ln is monotonic, so the nearest is one of the two values around s. The
  // distance is |ln s - ln c| as runtime.portable computes it (numpy's log and
  // the C library's can differ in the last bit: a marking decision changes
  // only for a scale within ~1e-16 of the margin). The ratio test keeps the
  // log off the common case, where s is far from both.
  const size_t upper = static_cast<size_t>(std::lower_bound(values_.begin(), values_.end(), s) - values_.begin());
  Nearest best{0, std::numeric_limits<double>::infinity()};
  for (size_t which : {upper - 1, upper}) {  // upper - 1 wraps to SIZE_MAX when upper == 0
    if (which >= values_.size()) continue;
    const double ratio = s / values_[which];
    const double distance = (ratio > 0.95 && ratio < 1.05) ? std::fabs(std::log(s) - logs_[which]) : kFar;
    if (distance < best.distance) best = {which, distance};
  }
  return best;
}

void mark_slice(const float* scales, const int32_t* indexes, size_t count, uint64_t base, double margin,
                const CriticalValues& critical, SideInfo* side) {
  for (size_t i = 0; i < count; ++i) {
    const float s = scales[i];
    if (!(s > 0.0f) || !std::isfinite(s)) continue;
    const CriticalValues::Nearest near = critical.nearest(s);
    if (near.distance > margin) continue;
    uint8_t bit;
    if (indexes[i] == critical.below(near.which)) {
      bit = 0;
    } else if (indexes[i] == critical.above(near.which)) {
      bit = 1;
    } else {  // impossible for margins under the table's spacing: a bug
      fail(ErrorKind::bad_input, "internal error: a marked scale's index is on neither side of its critical value");
    }
    side->positions.push_back(base + i);
    side->bits.push_back(bit);
  }
}

namespace {

constexpr unsigned kMaxRiceParameter = 30;
constexpr size_t kSideHeadBytes = 5;  // Rice parameter, then the count (uint32)

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>* out) : out_(out) {}
  void put(unsigned bit) {
    if (used_ == 0) out_->push_back(0);
    if (bit) out_->back() |= static_cast<uint8_t>(0x80u >> used_);
    used_ = (used_ + 1) % 8;
  }

 private:
  std::vector<uint8_t>* out_;
  unsigned used_ = 0;
};

class BitReader {
 public:
  BitReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool at_end() const { return byte_ >= size_; }
  unsigned get() {  // at_end() must be false
    const unsigned bit = (data_[byte_] >> (7 - used_)) & 1u;
    if (++used_ == 8) {
      used_ = 0;
      ++byte_;
    }
    return bit;
  }
  // The rest of the current byte is zero and no byte follows it.
  bool only_padding_left() const {
    if (used_ == 0) return byte_ == size_;
    return byte_ + 1 == size_ && (data_[byte_] & (0xFFu >> used_)) == 0;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t byte_ = 0;
  unsigned used_ = 0;
};

}  // namespace

std::vector<uint8_t> encode_side_stream(const SideInfo& side) {
  std::vector<uint8_t> out;
  const size_t n = side.positions.size();
  if (n == 0) return out;
  std::vector<uint64_t> gaps(n);
  uint64_t previous = 0;
  for (size_t i = 0; i < n; ++i) {
    gaps[i] = side.positions[i] - (i ? previous + 1 : 0);
    previous = side.positions[i];
  }
  unsigned best_k = 0;
  uint64_t best_bits = std::numeric_limits<uint64_t>::max();
  for (unsigned k = 0; k <= kMaxRiceParameter; ++k) {
    uint64_t bits = 0;
    for (uint64_t gap : gaps) bits += (gap >> k) + 1 + k + 1;  // unary, its stop bit, k low bits, side bit
    if (bits < best_bits) {
      best_bits = bits;
      best_k = k;
    }
  }
  out.push_back(static_cast<uint8_t>(best_k));
  const uint32_t count = static_cast<uint32_t>(n);
  for (int b = 0; b < 4; ++b) out.push_back(static_cast<uint8_t>(count >> (8 * b)));
  BitWriter writer(&out);
  for (size_t i = 0; i < n; ++i) {
    for (uint64_t q = gaps[i] >> best_k; q > 0; --q) writer.put(1);
    writer.put(0);
    for (unsigned b = best_k; b-- > 0;) writer.put(static_cast<unsigned>(gaps[i] >> b) & 1u);
    writer.put(side.bits[i]);
  }
  return out;
}

SideInfo decode_side_stream(const uint8_t* data, size_t size, uint64_t latent_size) {
  SideInfo side;
  if (size == 0) return side;
  auto refuse = [](const std::string& reason) { fail(ErrorKind::corrupt_stream, "side stream " + reason); };
  if (size < kSideHeadBytes) refuse("of " + std::to_string(size) + " bytes is shorter than its 5-byte head");
  const unsigned k = data[0];
  const uint64_t n = uint64_t{data[1]} | (uint64_t{data[2]} << 8) | (uint64_t{data[3]} << 16) | (uint64_t{data[4]} << 24);
  if (k > kMaxRiceParameter) refuse("has Rice parameter " + std::to_string(k) + ", over 30");
  if (n == 0) refuse("is not empty but lists no element");
  if (n > latent_size)
    refuse("lists " + std::to_string(n) + " elements, the latent has " + std::to_string(latent_size));
  // Every entry takes at least k + 2 bits: a count the bytes cannot hold is
  // refused before anything of its size is allocated.
  if (n * (k + 2) > 8 * uint64_t{size - kSideHeadBytes})
    refuse("of " + std::to_string(size) + " bytes cannot hold " + std::to_string(n) + " entries");
  side.positions.reserve(n);
  side.bits.reserve(n);
  BitReader reader(data + kSideHeadBytes, size - kSideHeadBytes);
  const uint64_t longest_run = latent_size >> k;
  uint64_t next = 0;  // the smallest position the next entry can have
  for (uint64_t entry = 0; entry < n; ++entry) {
    auto need_bit = [&]() {
      if (reader.at_end()) refuse("ends before its " + std::to_string(n) + " entries");
      return reader.get();
    };
    uint64_t q = 0;
    while (need_bit()) {
      if (++q > longest_run) refuse("has a gap longer than the latent");
    }
    uint64_t gap = q << k;
    for (unsigned b = k; b-- > 0;) gap |= uint64_t{need_bit()} << b;
    const uint64_t position = next + gap;
    if (position >= latent_size)
      refuse("marks position " + std::to_string(position) + ", past the latent's " + std::to_string(latent_size));
    side.positions.push_back(position);
    side.bits.push_back(static_cast<uint8_t>(need_bit()));
    next = position + 1;
  }
  if (!reader.only_padding_left()) refuse("has nonzero padding bits or bytes after its entries");
  return side;
}

void apply_side_info(const float* scales, int32_t* indexes, size_t count, uint64_t base, double margin,
                     const CriticalValues& critical, const SideInfo& side, size_t* cursor) {
  // The file is for setups within margin / 2 of float64 (runtime.portable):
  // two of them differ by less than the margin.
  const double tolerance = margin / 2;
  size_t& at = *cursor;
  for (size_t i = 0; i < count; ++i) {
    const float s = scales[i];
    const bool marked = at < side.positions.size() && side.positions[at] == base + i;
    if (marked) {
      if (!(s > 0.0f) || !std::isfinite(s))
        fail(ErrorKind::desync, "decoder's scale at marked position " + std::to_string(base + i) +
                                    " is not a positive number: scale outside the file's margin");
      const CriticalValues::Nearest near = critical.nearest(s);
      if (near.distance > margin + tolerance)
        fail(ErrorKind::desync, "scale at position " + std::to_string(base + i) +
                                    " differs from the encoder's by more than the file's margin");
      indexes[i] = side.bits[at] ? critical.above(near.which) : critical.below(near.which);
      ++at;
    } else if (s > 0.0f && std::isfinite(s)) {
      // The encoder marked everything within the margin: an unmarked scale
      // this close means a damaged side stream or a setup outside the margin.
      if (critical.nearest(s).distance < margin - tolerance)
        fail(ErrorKind::desync, "scale at unmarked position " + std::to_string(base + i) +
                                    " lies within the file's margin of an index boundary (damaged side stream, "
                                    "or a setup outside the margin)");
    }
  }
}

}  // namespace dcae

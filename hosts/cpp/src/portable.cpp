#include "portable.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>

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

CriticalValues::Nearest CriticalValues::nearest_log(double log_s) const {
  // ln is monotonic, so the nearest is one of the two values around log_s,
  // and the distance is |log_s - ln c| in float64 as dcae_deploy.runtime.portable
  // computes it (numpy's log and the C library's can differ in the last bit:
  // a marking decision changes only for a scale within ~1e-16 of the margin).
  const size_t upper = static_cast<size_t>(std::lower_bound(logs_.begin(), logs_.end(), log_s) - logs_.begin());
  Nearest best{0, std::numeric_limits<double>::infinity()};
  for (size_t which : {upper - 1, upper}) {  // upper - 1 wraps to SIZE_MAX when upper == 0
    if (which >= logs_.size()) continue;
    const double distance = std::fabs(log_s - logs_[which]);
    if (distance < best.distance) best = {which, distance};  // the lower one of equals
  }
  return best;
}

unsigned CriticalValues::largest_shift_count(double margin) const {
  double spacing = std::numeric_limits<double>::infinity();
  for (size_t i = 1; i < logs_.size(); ++i) spacing = std::min(spacing, logs_[i] - logs_[i - 1]);
  unsigned count = kMaxShifts;
  while (count > 1 && largest_step(count) * 2 * margin >= spacing / 2) count /= 2;
  return count;
}

int32_t CriticalValues::shifted_index(double log_s, double shift, int32_t index) const {
  // The first critical value with ln c >= log_s: the one at or above it; the
  // one before it is the largest with ln c < log_s, the one just under it.
  const size_t above = static_cast<size_t>(std::lower_bound(logs_.begin(), logs_.end(), log_s) - logs_.begin());
  if (shift > 0) {
    if (above >= 1 && log_s - logs_[above - 1] <= shift) return below_[above - 1];
  } else if (shift < 0) {
    if (above < logs_.size() && logs_[above] - log_s < -shift) return above_[above];
  }
  return index;
}

double log_scale(float s) {
  if (!(s > 0.0f) || !std::isfinite(s)) return std::numeric_limits<double>::quiet_NaN();
  return std::log(static_cast<double>(s));
}

namespace {

// dcae_deploy.runtime.portable.mark for one element (log_s from log_scale, its critical
// values shifted by `shift`): listed when within the margin of one.
void mark_element(double log_s, double shift, int32_t index, uint64_t position, double margin,
                  const CriticalValues& critical, SideInfo* side) {
  if (std::isnan(log_s)) return;
  const CriticalValues::Nearest near = critical.nearest_log(log_s - shift);
  if (!(near.distance <= margin)) return;
  uint8_t bit;
  if (index == critical.above(near.which)) {
    bit = 1;
  } else if (index == critical.below(near.which)) {
    bit = 0;
  } else {  // the indexes were not computed from these scales: a bug
    throw std::logic_error("a marked scale's index is on neither side of its critical value");
  }
  side->positions.push_back(position);
  side->bits.push_back(bit);
}

}  // namespace

void mark_slice(const float* scales, const int32_t* indexes, size_t count, uint64_t base, double margin,
                const CriticalValues& critical, SideInfo* side) {
  for (size_t i = 0; i < count; ++i) mark_element(log_scale(scales[i]), 0.0, indexes[i], base + i, margin, critical, side);
}

namespace {

constexpr unsigned kMaxRiceParameter = 30;
constexpr size_t kListHeadBytes = 5;    // the marked list's: Rice parameter, then the count (uint32)
constexpr size_t kShiftHeadBytes = 9;   // log2 K, then block length and block count (uint32 each)
constexpr uint64_t kLargestLatent = (uint64_t{1} << 31) - 1;  // positions' bound when the latent is not known

[[noreturn]] void refuse(const std::string& reason) { fail(ErrorKind::corrupt_stream, "side stream " + reason); }

uint32_t get_u32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
void put_u32(std::vector<uint8_t>& out, uint64_t v) {
  if (v > UINT32_MAX) throw std::logic_error("a side stream field does not fit in 32 bits");
  for (int b = 0; b < 4; ++b) out.push_back(static_cast<uint8_t>(v >> (8 * b)));
}

unsigned choice_bits(unsigned count) {  // log2 K
  unsigned width = 0;
  while ((1u << width) < count) ++width;
  return width;
}

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

// The Rice parameter giving the fewest bits for these gaps (the smallest of
// equals), and that number of bits: per entry the unary run, its stop bit,
// k low bits and the side bit.
std::pair<unsigned, uint64_t> best_rice_parameter(const std::vector<uint64_t>& gaps) {
  unsigned best_k = 0;
  uint64_t best_bits = std::numeric_limits<uint64_t>::max();
  for (unsigned k = 0; k <= kMaxRiceParameter; ++k) {
    uint64_t bits = 0;
    for (uint64_t gap : gaps) bits += (gap >> k) + 1 + k + 1;
    if (bits < best_bits) {
      best_bits = bits;
      best_k = k;
    }
  }
  return {best_k, best_bits};
}

// dcae_deploy.runtime.portable._marked_list_size: the marked list's bytes for these gaps.
uint64_t marked_list_size(const std::vector<uint64_t>& gaps) {
  if (gaps.empty()) return 0;
  return kListHeadBytes + (best_rice_parameter(gaps).second + 7) / 8;
}

// dcae_deploy.runtime.portable._choices_size: the side stream's bytes before the marked list.
uint64_t choices_size(unsigned count, uint64_t blocks) {
  if (count == 1) return 1;
  return kShiftHeadBytes + (blocks * choice_bits(count) + 7) / 8;
}

// Block lengths an encoder tries, as multiples of a channel's plane (h * w):
// dcae_deploy.runtime.portable.BLOCK_PLANES, in its order.
constexpr double kBlockPlanes[] = {1.0 / 8, 1.0 / 4, 1.0 / 2, 1.0, 2.0, 4.0};

// dcae_deploy.runtime.portable._block_lengths: the integral ones in [1, latent_size], each once.
std::vector<uint64_t> block_lengths(uint64_t latent_size, uint64_t plane) {
  std::vector<uint64_t> lengths;
  for (double planes : kBlockPlanes) {
    const double length = static_cast<double>(plane) * planes;
    if (std::floor(length) != length || length < 1 || length > static_cast<double>(latent_size)) continue;
    const uint64_t whole = static_cast<uint64_t>(length);
    if (std::find(lengths.begin(), lengths.end(), whole) == lengths.end()) lengths.push_back(whole);
  }
  return lengths;
}

// The marked list's bytes (empty when nothing is marked).
std::vector<uint8_t> encode_marked_list(const SideInfo& side) {
  std::vector<uint8_t> out;
  const size_t n = side.positions.size();
  if (n == 0) return out;
  std::vector<uint64_t> gaps(n);
  for (size_t i = 0; i < n; ++i) {
    if (i && side.positions[i] <= side.positions[i - 1]) throw std::logic_error("marked positions must increase");
    gaps[i] = side.positions[i] - (i ? side.positions[i - 1] + 1 : 0);
  }
  const unsigned k = best_rice_parameter(gaps).first;
  out.push_back(static_cast<uint8_t>(k));
  put_u32(out, n);
  BitWriter writer(&out);
  for (size_t i = 0; i < n; ++i) {
    for (uint64_t q = gaps[i] >> k; q > 0; --q) writer.put(1);
    writer.put(0);
    for (unsigned b = k; b-- > 0;) writer.put(static_cast<unsigned>(gaps[i] >> b) & 1u);
    writer.put(side.bits[i]);
  }
  return out;
}

// The marked list's positions and bits, into `side`.
void decode_marked_list(const uint8_t* data, size_t size, uint64_t latent_size, SideInfo* side) {
  if (size == 0) return;
  if (size < kListHeadBytes)
    fail(ErrorKind::corrupt_stream, "side stream's marked list of " + std::to_string(size) +
                                        " bytes is shorter than its 5-byte head");
  const unsigned k = data[0];
  const uint64_t n = get_u32(data + 1);
  if (k > kMaxRiceParameter) refuse("has Rice parameter " + std::to_string(k) + ", over 30");
  if (n == 0) refuse("lists no element");
  if (n > latent_size)
    refuse("lists " + std::to_string(n) + " elements, the latent has " + std::to_string(latent_size));
  // Every entry takes at least k + 2 bits: a count the bytes cannot hold is
  // refused before anything of its size is allocated.
  if (n * (k + 2) > 8 * uint64_t{size - kListHeadBytes})
    fail(ErrorKind::corrupt_stream, "side stream's marked list of " + std::to_string(size) + " bytes cannot hold " +
                                        std::to_string(n) + " entries");
  side->positions.reserve(n);
  side->bits.reserve(n);
  BitReader reader(data + kListHeadBytes, size - kListHeadBytes);
  const uint64_t longest_run = latent_size >> k;
  uint64_t next = 0;  // the smallest position the next entry can have, <= latent_size
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
    if (gap >= latent_size - next)  // next + gap >= latent_size, without overflow
      refuse("marks position " + std::to_string(next) + " + " + std::to_string(gap) + ", past the latent's " +
             std::to_string(latent_size));
    const uint64_t position = next + gap;
    side->positions.push_back(position);
    side->bits.push_back(static_cast<uint8_t>(need_bit()));
    next = position + 1;
  }
  if (!reader.only_padding_left()) refuse("has nonzero padding bits or bytes after its entries");
}

}  // namespace

std::vector<uint8_t> encode_side_stream(const SideInfo& side, uint64_t latent_size) {
  const ThresholdShifts& shifts = side.shifts;
  if (shifts.count == 0 || (shifts.count & (shifts.count - 1)) || shifts.count > kMaxShifts)
    throw std::logic_error("no such shift count in a side stream");
  const unsigned width = choice_bits(shifts.count);
  std::vector<uint8_t> out = {static_cast<uint8_t>(width)};
  if (shifts.count > 1) {
    const uint64_t blocks = shifts.block ? (latent_size + shifts.block - 1) / shifts.block : 0;
    if (!blocks || shifts.choices.size() != blocks ||
        std::any_of(shifts.choices.begin(), shifts.choices.end(), [&](uint8_t c) { return c >= shifts.count; }))
      throw std::logic_error("one choice under the shift count per block is needed");
    put_u32(out, shifts.block);
    put_u32(out, blocks);
    BitWriter writer(&out);
    for (uint8_t choice : shifts.choices)
      for (unsigned b = width; b-- > 0;) writer.put((choice >> b) & 1u);
  }
  const std::vector<uint8_t> listed = encode_marked_list(side);
  out.insert(out.end(), listed.begin(), listed.end());
  return out;
}

SideInfo decode_side_stream(const uint8_t* data, size_t size, uint64_t latent_size) {
  if (size == 0) refuse("is empty (it starts with the shift count)");
  const unsigned width = data[0];
  if (width > choice_bits(kMaxShifts))
    refuse("shift count 2**" + std::to_string(width) + " is over " + std::to_string(kMaxShifts));
  SideInfo side;
  size_t start = 1;
  if (width) {
    if (size < kShiftHeadBytes) refuse("of " + std::to_string(size) + " bytes is shorter than its shift head");
    const uint64_t block = get_u32(data + 1), blocks = get_u32(data + 5);
    if (block == 0 || blocks == 0)
      refuse("has " + std::to_string(blocks) + " shift blocks of " + std::to_string(block) + " elements");
    if (latent_size != kLatentSizeUnknown && blocks != (latent_size + block - 1) / block)
      refuse("has " + std::to_string(blocks) + " shift blocks of " + std::to_string(block) +
             " elements for a latent of " + std::to_string(latent_size));
    start = kShiftHeadBytes;
    const uint64_t choice_bytes = (blocks * width + 7) / 8;
    // Checked before anything of the count's size is allocated.
    if (size - start < choice_bytes)
      refuse("of " + std::to_string(size) + " bytes cannot hold " + std::to_string(blocks) + " shift choices");
    BitReader reader(data + start, static_cast<size_t>(choice_bytes));
    ThresholdShifts& shifts = side.shifts;
    shifts.count = 1u << width;
    shifts.block = block;
    shifts.choices.resize(blocks);
    for (uint8_t& choice : shifts.choices) {
      unsigned value = 0;
      for (unsigned b = 0; b < width; ++b) value = (value << 1) | reader.get();
      choice = static_cast<uint8_t>(value);
    }
    if (!reader.only_padding_left()) refuse("shift choices' padding bits are not zero");
    start += static_cast<size_t>(choice_bytes);
    if (latent_size == kLatentSizeUnknown) latent_size = block * blocks;
  }
  decode_marked_list(data + start, size - start, latent_size == kLatentSizeUnknown ? kLargestLatent : latent_size,
                     &side);
  return side;
}

PortableEncoding encode_portable(const float* scales, int32_t* indexes, size_t latent_size, size_t plane,
                                 double margin, const CriticalValues& critical) {
  const unsigned most = critical.largest_shift_count(margin);
  // Per element its ln scale (NaN: not listed, not shifted) and, bit k, near_k:
  // within the margin of a critical value shifted by step(k) * 2 margin.
  std::vector<double> logs(latent_size);
  std::vector<uint16_t> near(latent_size, 0);
  static_assert(kMaxShifts <= 16, "near_k takes one bit of a uint16_t per choice");
  // An element farther than this from every unshifted critical value is near
  // none of the shifted ones (the slack is far above float64 rounding), so
  // most elements skip the test per shift; the result is the same.
  const double reach = largest_step(most) * 2.0 * margin + margin + 1e-9;
  for (size_t i = 0; i < latent_size; ++i) {
    logs[i] = log_scale(scales[i]);
    if (std::isnan(logs[i]) || critical.nearest_log(logs[i]).distance > reach) continue;
    for (unsigned k = 0; k < most; ++k)
      if (critical.nearest_log(logs[i] - shift_step(k) * (2.0 * margin)).distance <= margin)
        near[i] = static_cast<uint16_t>(near[i] | (1u << k));
  }
  std::vector<uint64_t> gaps;
  // The size of the marked list of the elements `listed(i)` says.
  auto list_size = [&](auto listed) {
    gaps.clear();
    uint64_t next = 0;
    for (size_t i = 0; i < latent_size; ++i)
      if (listed(i)) {
        gaps.push_back(i - next);
        next = i + 1;
      }
    return marked_list_size(gaps);
  };

  ThresholdShifts best;  // no shifts, the first candidate
  uint64_t best_size = choices_size(1, 0) + list_size([&](size_t i) { return near[i] & 1u; });
  for (uint64_t block : most > 1 ? block_lengths(latent_size, plane) : std::vector<uint64_t>{}) {
    const uint64_t blocks = (latent_size + block - 1) / block;
    std::vector<uint64_t> counts(size_t{most} * blocks, 0);  // [k][block]
    for (size_t i = 0; i < latent_size; ++i)
      for (unsigned k = 0; k < most; ++k) counts[k * blocks + i / block] += (near[i] >> k) & 1u;
    for (unsigned count : {2u, 4u, 8u, 16u}) {
      if (count > most) break;
      std::vector<uint8_t> choices(blocks, 0);
      for (uint64_t b = 0; b < blocks; ++b)
        for (unsigned k = 1; k < count; ++k)
          if (counts[k * blocks + b] < counts[choices[b] * blocks + b]) choices[b] = static_cast<uint8_t>(k);
      const uint64_t size = choices_size(count, blocks) +
                            list_size([&](size_t i) { return (near[i] >> choices[i / block]) & 1u; });
      if (size < best_size) {
        best_size = size;
        best = {count, block, std::move(choices)};
      }
    }
  }

  PortableEncoding encoding;
  SideInfo side;
  side.shifts = std::move(best);
  for (size_t i = 0; i < latent_size; ++i) {
    const double shift = side.shifts.offset(i, margin);
    if (side.shifts.count > 1 && !std::isnan(logs[i])) indexes[i] = critical.shifted_index(logs[i], shift, indexes[i]);
    mark_element(logs[i], shift, indexes[i], i, margin, critical, &side);
  }
  encoding.side = encode_side_stream(side, latent_size);
  if (encoding.side.size() != best_size) throw std::logic_error("the side stream's size is not the one chosen");
  encoding.listed = side.positions.size();
  encoding.shifts = std::move(side.shifts);
  return encoding;
}

PortableDecoding::PortableDecoding(const uint8_t* data, size_t size, uint64_t latent_size,
                                   const CriticalValues& critical, double margin)
    : critical_(critical), margin_(margin), side_(decode_side_stream(data, size, latent_size)) {
  if (side_.shifts.count > critical.largest_shift_count(margin)) {
    char text[32];
    std::snprintf(text, sizeof text, "%g", margin);
    refuse("has " + std::to_string(side_.shifts.count) + " threshold shifts: more than the margin " + text +
           " allows with this scale table");
  }
}

void PortableDecoding::apply(uint64_t start, const float* scales, int32_t* indexes, size_t count) {
  // The file is for setups within margin / 2 of float64 (dcae_deploy.runtime.portable):
  // two of them differ by less than the margin. A listed element was within
  // the margin of its (shifted) critical value for the encoder, so within 1.5
  // margin here; an unlisted one farther than the margin, so farther than
  // margin / 2 here.
  const double tolerance = margin_ / 2;
  const std::vector<uint64_t>& positions = side_.positions;
  size_t at = static_cast<size_t>(std::lower_bound(positions.begin(), positions.end(), start) - positions.begin());
  for (size_t i = 0; i < count; ++i) {
    const uint64_t position = start + i;
    const double log_s = log_scale(scales[i]);
    const double shift = side_.shifts.offset(position, margin_);
    if (side_.shifts.count > 1 && !std::isnan(log_s)) indexes[i] = critical_.shifted_index(log_s, shift, indexes[i]);
    const bool marked = at < positions.size() && positions[at] == position;
    if (marked) {
      if (std::isnan(log_s))
        fail(ErrorKind::desync, "decoder's scale at listed position " + std::to_string(position) +
                                    " is not a positive number: scale outside the file's margin");
      const CriticalValues::Nearest near = critical_.nearest_log(log_s - shift);
      if (near.distance > margin_ + tolerance)
        fail(ErrorKind::desync, "scale at position " + std::to_string(position) +
                                    " differs from the encoder's by more than the file's margin");
      indexes[i] = side_.bits[at] ? critical_.above(near.which) : critical_.below(near.which);
      ++at;
    } else if (!std::isnan(log_s) && critical_.nearest_log(log_s - shift).distance < margin_ - tolerance) {
      // The encoder listed everything within the margin: an unlisted scale
      // this close means a damaged side stream or a setup outside the margin.
      fail(ErrorKind::desync, "scale at unlisted position " + std::to_string(position) +
                                  " lies within the file's margin of an index boundary (damaged side stream, "
                                  "or a setup outside the margin)");
    }
  }
}

}  // namespace dcae

#include "rans.hpp"

#include <cstdio>

#include "errors.hpp"

namespace dcae {
namespace {

constexpr uint32_t kPrecision = 16;
constexpr uint64_t kStateLow = 1ull << 31;  // RANS64_L: lower bound of the state, and its initial value
constexpr uint32_t kBypassBits = 4;
constexpr uint64_t kBypassMask = (1u << kBypassBits) - 1;
// compressai's encoder counts chunks with `raw >> (4 * n)` on a uint32, which
// never reaches zero once raw >= 2^28 (a shift by 32): valid streams have at
// most 7 chunks, so their count fits in one chunk.
constexpr int64_t kMaxBypassChunks = 7;
constexpr int64_t kMaxRawValue = int64_t{1} << (kBypassBits * kMaxBypassChunks);
// Rans64EncPut spills a word when x >= ((L >> 16) << 32) * freq; a bypass
// chunk is a symbol of frequency 1 << (16 - 4).
constexpr uint64_t kSpillPerFreq = (kStateLow >> kPrecision) << 32;
constexpr uint64_t kBypassSpill = kSpillPerFreq << (kPrecision - kBypassBits);

}  // namespace

std::string CdfTables::problem(const std::vector<int32_t>& cdfs, size_t n_tables, size_t row_length,
                               const std::vector<int32_t>& lengths, const std::vector<int32_t>& offsets) {
  if (n_tables == 0 || lengths.size() != n_tables || offsets.size() != n_tables || cdfs.size() != n_tables * row_length)
    return "entropy tables disagree: " + std::to_string(n_tables) + " cdfs, " + std::to_string(lengths.size()) +
           " lengths, " + std::to_string(offsets.size()) + " offsets";
  for (size_t t = 0; t < n_tables; ++t) {
    const int32_t length = lengths[t];
    if (length < 3 || static_cast<size_t>(length) > row_length)
      return "cdf lengths must be in [3, " + std::to_string(row_length) + "]";
    const int32_t* row = cdfs.data() + t * row_length;
    if (row[0] != 0 || row[length - 1] != (1 << kPrecision))
      return "invalid cdf table: rows must rise strictly from 0 to 65536";
    for (int32_t s = 1; s < length; ++s)
      if (row[s] <= row[s - 1]) return "invalid cdf table: rows must rise strictly from 0 to 65536";
  }
  return {};
}

CdfTables::CdfTables(std::vector<int32_t> cdfs, size_t n_tables, size_t row_length, std::vector<int32_t> lengths,
                     std::vector<int32_t> offsets) {
  const std::string reason = problem(cdfs, n_tables, row_length, lengths, offsets);
  if (!reason.empty()) fail(ErrorKind::bad_input, reason);
  cdfs_ = std::move(cdfs);
  lengths_ = std::move(lengths);
  offsets_ = std::move(offsets);
  n_tables_ = n_tables;
  row_length_ = row_length;
  buckets_.resize(n_tables * kBuckets);
  for (size_t t = 0; t < n_tables; ++t) {
    const int32_t* cdf = row(t);
    int32_t symbol = 0;
    for (uint32_t bucket = 0; bucket < kBuckets; ++bucket) {
      // Ends within the row: its last value, 1 << 16, exceeds every bucket.
      while (static_cast<uint32_t>(cdf[symbol + 1]) <= (bucket << kBucketShift)) ++symbol;
      buckets_[t * kBuckets + bucket] = symbol;
    }
  }
}

std::vector<uint8_t> rans_encode(const int32_t* symbols, const int32_t* indexes, size_t count,
                                 const CdfTables& tables) {
  // Words are written backwards from the end (rANS is a stack: the decoder
  // pops first what the encoder pushed last). A symbol pushes at most one
  // word, an escape at most 9 (symbol, count, 7 chunks); two for the flush.
  std::vector<uint32_t> words(2 * count + 2 + 16);
  size_t pos = words.size();
  uint64_t x = kStateLow;
  auto spill = [&](uint64_t limit) {
    if (x >= limit) {
      if (pos == 0) fail(ErrorKind::bad_input, "internal rANS encoder error: output buffer too small");
      words[--pos] = static_cast<uint32_t>(x);
      x >>= 32;
    }
  };
  for (size_t i = count; i-- > 0;) {
    const int32_t table = indexes[i];
    if (table < 0 || static_cast<size_t>(table) >= tables.size())
      fail(ErrorKind::bad_input, "cdf index " + std::to_string(table) + " at symbol " + std::to_string(i) +
                                     " is outside the " + std::to_string(tables.size()) + " tables");
    const int64_t max_value = int64_t{tables.length(table)} - 2;
    int64_t value = int64_t{symbols[i]} - tables.offset(table);
    if (value < 0 || value >= max_value) {
      // Folded to a non-negative raw value: odd below the table, even from its top.
      const int64_t raw = value < 0 ? -2 * value - 1 : 2 * (value - max_value);
      if (raw >= kMaxRawValue)
        fail(ErrorKind::bad_input,
             "symbol " + std::to_string(symbols[i]) + " at " + std::to_string(i) + " is too far outside its table to code");
      int64_t n_chunks = 0;
      while ((raw >> (kBypassBits * n_chunks)) != 0) ++n_chunks;
      // Pushed in reverse of the decoding order: chunks high to low, then their count.
      for (int64_t j = n_chunks; j >= 0; --j) {
        const uint64_t chunk = j == 0 ? static_cast<uint64_t>(n_chunks)
                                      : static_cast<uint64_t>(raw >> (kBypassBits * (j - 1))) & kBypassMask;
        spill(kBypassSpill);
        x = (x << kBypassBits) | chunk;
      }
      value = max_value;  // the escape symbol itself, pushed last
    }
    const int32_t* cdf = tables.row(table);
    const uint64_t start = static_cast<uint64_t>(cdf[value]);
    const uint64_t freq = static_cast<uint64_t>(cdf[value + 1]) - start;
    spill(kSpillPerFreq * freq);
    x = ((x / freq) << kPrecision) + (x % freq) + start;
  }
  if (pos < 2) fail(ErrorKind::bad_input, "internal rANS encoder error: output buffer too small");
  words[--pos] = static_cast<uint32_t>(x >> 32);
  words[--pos] = static_cast<uint32_t>(x);
  std::vector<uint8_t> bytes;
  bytes.reserve(4 * (words.size() - pos));
  for (size_t w = pos; w < words.size(); ++w)
    for (int b = 0; b < 4; ++b) bytes.push_back(static_cast<uint8_t>(words[w] >> (8 * b)));
  return bytes;
}

RansDecoder::RansDecoder(const uint8_t* data, size_t size) : data_(data), n_words_(size / 4) {
  if (size < 8 || size % 4)
    fail(ErrorKind::corrupt_stream,
         "rANS stream of " + std::to_string(size) + " bytes: must be a multiple of 4, at least 8");
  state_ = uint64_t{word(0)} | (uint64_t{word(1)} << 32);
}

uint32_t RansDecoder::word(size_t index) const {
  const uint8_t* p = data_ + 4 * index;
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

bool RansDecoder::refill() {
  if (state_ < kStateLow) {
    if (pos_ >= n_words_) return false;
    state_ = (state_ << 32) | word(pos_++);
  }
  return true;
}

void RansDecoder::decode(const int32_t* indexes, size_t count, const CdfTables& tables, int32_t* out) {
  if (failed_) fail(ErrorKind::corrupt_stream, "rANS stream already failed to decode");
  auto stop = [&](const char* reason, size_t at) {
    failed_ = true;
    fail(ErrorKind::corrupt_stream,
         std::string("rANS stream ") + reason + ", at symbol " + std::to_string(at) + " of " + std::to_string(count));
  };
  constexpr const char* kEndsEarly = "ends early (truncated, or decoded with other entropy parameters)";
  for (size_t i = 0; i < count; ++i) {
    const int32_t table = indexes[i];
    if (table < 0 || static_cast<size_t>(table) >= tables.size()) {
      failed_ = true;
      fail(ErrorKind::bad_input, "cdf index " + std::to_string(table) + " is outside the tables");
    }
    const int32_t max_value = tables.length(table) - 2;
    const int32_t* cdf = tables.row(table);
    // The symbol s with cdf[s] <= cum < cdf[s + 1], scanning up from its bucket.
    const uint32_t cum = static_cast<uint32_t>(state_ & 0xFFFF);
    int32_t symbol = tables.bucket_symbol(table, cum);
    while (static_cast<uint32_t>(cdf[symbol + 1]) <= cum) ++symbol;
    const uint64_t start = static_cast<uint64_t>(cdf[symbol]);
    const uint64_t freq = static_cast<uint64_t>(cdf[symbol + 1]) - start;
    state_ = freq * (state_ >> kPrecision) + cum - start;
    if (!refill()) stop(kEndsEarly, i);

    int64_t value = symbol;
    if (symbol == max_value) {
      const int64_t n_chunks = static_cast<int64_t>(state_ & kBypassMask);
      state_ >>= kBypassBits;
      if (!refill()) stop(kEndsEarly, i);
      if (n_chunks > kMaxBypassChunks) stop("has an escape longer than any encoder writes", i);
      int64_t raw = 0;
      for (int64_t j = 0; j < n_chunks; ++j) {
        raw |= static_cast<int64_t>(state_ & kBypassMask) << (kBypassBits * j);
        state_ >>= kBypassBits;
        if (!refill()) stop(kEndsEarly, i);
      }
      value = (raw & 1) ? -(raw >> 1) - 1 : (raw >> 1) + max_value;
    }
    out[i] = static_cast<int32_t>(value + tables.offset(table));
  }
}

void RansDecoder::finish() {
  if (failed_) fail(ErrorKind::corrupt_stream, "rANS stream already failed to decode");
  if (state_ != kStateLow || pos_ != n_words_) {
    char state[32];
    std::snprintf(state, sizeof state, "0x%llx", static_cast<unsigned long long>(state_));
    fail(ErrorKind::desync, std::string("rANS decoder out of sync: state ") + state + ", " +
                                std::to_string(4 * (n_words_ - pos_)) + " bytes left over");
  }
}

}  // namespace dcae

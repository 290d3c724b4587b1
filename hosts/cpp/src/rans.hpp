// rANS entropy coder, byte-identical to compressai 1.2.8's (and so to
// dcae_deploy/runtime/rans.py): a 64-bit state kept in [2^31, 2^63), 32-bit output
// words, 16-bit quantised CDFs; a value outside its table is coded as the
// table's last symbol followed by 4-bit bypass chunks (their count, then the
// value's chunks, low first). The stream is the encoder's words in
// little-endian order, starting with the final state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dcae {

// A set of quantised CDF tables, checked once: every row rises strictly from
// 0 to 1 << 16 within its length (so every frequency is in [1, 65535], as
// compressai's coder needs). Rows are padded to `row_length`.
class CdfTables {
 public:
  CdfTables() = default;
  // Empty when valid, else the reason.
  static std::string problem(const std::vector<int32_t>& cdfs, size_t n_tables, size_t row_length,
                             const std::vector<int32_t>& lengths, const std::vector<int32_t>& offsets);
  // Throws Error(bad_input) with problem()'s reason.
  CdfTables(std::vector<int32_t> cdfs, size_t n_tables, size_t row_length, std::vector<int32_t> lengths,
            std::vector<int32_t> offsets);

  size_t size() const { return n_tables_; }
  const int32_t* row(size_t table) const { return cdfs_.data() + table * row_length_; }
  int32_t length(size_t table) const { return lengths_[table]; }
  int32_t offset(size_t table) const { return offsets_[table]; }
  // The decoder's start for a cumulative frequency: the symbol whose range
  // holds the first value of its 64-wide bucket.
  int32_t bucket_symbol(size_t table, uint32_t cum) const { return buckets_[table * kBuckets + (cum >> kBucketShift)]; }

  static constexpr uint32_t kBucketShift = 6;
  static constexpr uint32_t kBuckets = (1u << 16) >> kBucketShift;

 private:
  std::vector<int32_t> cdfs_, lengths_, offsets_, buckets_;
  size_t n_tables_ = 0, row_length_ = 0;
};

// Code symbols[i] with table indexes[i]. Throws Error(bad_input) for an
// index outside the tables or a value too far outside its table to code.
std::vector<uint8_t> rans_encode(const int32_t* symbols, const int32_t* indexes, size_t count,
                                 const CdfTables& tables);

// Decodes one stream in consecutive parts; finish() checks that the decoder
// ended in the encoder's initial state with every word consumed.
class RansDecoder {
 public:
  // Throws Error(corrupt_stream) for a length no encoder writes.
  RansDecoder(const uint8_t* data, size_t size);
  void decode(const int32_t* indexes, size_t count, const CdfTables& tables, int32_t* out);
  void finish();

 private:
  uint32_t word(size_t index) const;
  bool refill();  // false: the stream ended

  const uint8_t* data_;
  size_t n_words_;
  size_t pos_ = 2;
  uint64_t state_ = 0;
  bool failed_ = false;
};

}  // namespace dcae

// numpy's .npy and .npz formats: the bundle's entropy.npz (np.savez: a zip
// of .npy members, stored or deflated, with zip64 fields), and .npy output
// for tools that hand arrays to Python.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dcae {

struct NpyArray {
  char kind = 0;  // numpy's dtype kind: 'f', 'i' or 'u' (little-endian)
  size_t item_size = 0;
  std::vector<size_t> shape;  // empty for a 0-d array
  std::vector<uint8_t> raw;   // C order

  size_t count() const;
};

// Errors are Error(bundle) naming `what`.
NpyArray parse_npy(const uint8_t* data, size_t size, const std::string& what);
std::map<std::string, NpyArray> read_npz(const std::string& path, const std::string& what);
NpyArray read_npy_file(const std::string& path, const std::string& what);

// Converting copies; integers must fit int32, floats become float32.
std::vector<float> to_float32(const NpyArray& array, const std::string& what);
std::vector<int32_t> to_int32(const NpyArray& array, const std::string& what);

std::vector<uint8_t> npy_bytes(const std::vector<size_t>& shape, const float* data);
std::vector<uint8_t> npy_bytes(const std::vector<size_t>& shape, const int32_t* data);

}  // namespace dcae

// SHA-256 (OpenSSL) of files and strings, as lowercase hex or raw bytes.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace dcae {

std::array<uint8_t, 32> sha256_bytes(const std::string& data);
std::string sha256_hex(const std::string& data);
// Error(bundle) naming `what` when the file cannot be read.
std::string sha256_file_hex(const std::string& path, const std::string& what);
std::string to_hex(const uint8_t* data, size_t size);

}  // namespace dcae

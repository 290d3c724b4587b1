#include "hashing.hpp"

#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "errors.hpp"

namespace dcae {
namespace {

struct DigestContext {
  DigestContext() : context(EVP_MD_CTX_new()) {
    if (!context || EVP_DigestInit_ex(context, EVP_sha256(), nullptr) != 1) throw std::bad_alloc();
  }
  ~DigestContext() { EVP_MD_CTX_free(context); }
  void update(const void* data, size_t size) { EVP_DigestUpdate(context, data, size); }
  std::array<uint8_t, 32> finish() {
    std::array<uint8_t, 32> digest{};
    unsigned int length = 0;
    EVP_DigestFinal_ex(context, digest.data(), &length);
    return digest;
  }
  EVP_MD_CTX* context;
};

}  // namespace

std::string to_hex(const uint8_t* data, size_t size) {
  static const char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (size_t i = 0; i < size; ++i) {
    hex += kDigits[data[i] >> 4];
    hex += kDigits[data[i] & 15];
  }
  return hex;
}

std::array<uint8_t, 32> sha256_bytes(const std::string& data) {
  DigestContext digest;
  digest.update(data.data(), data.size());
  return digest.finish();
}

std::string sha256_hex(const std::string& data) {
  const auto digest = sha256_bytes(data);
  return to_hex(digest.data(), digest.size());
}

std::string sha256_file_hex(const std::string& path, const std::string& what) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) fail(ErrorKind::bundle, what + " cannot be read (" + std::strerror(errno) + ")");
  DigestContext digest;
  std::vector<char> block(1 << 20);
  size_t got;
  while ((got = std::fread(block.data(), 1, block.size(), file.get())) > 0) digest.update(block.data(), got);
  if (std::ferror(file.get())) fail(ErrorKind::bundle, what + " cannot be read (read error)");
  const auto result = digest.finish();
  return to_hex(result.data(), result.size());
}

}  // namespace dcae

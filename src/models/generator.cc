// Helpers shared by every generator.
#include "rankone/models/generator.h"

#include "rankone/error.h"

#include <openssl/evp.h>

#include <memory>

namespace rankone {

std::string sha256_hex(const void* data, size_t size) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_Digest(data, size, digest, &digest_size, EVP_sha256(), nullptr) != 1) {
    throw Error(ErrorKind::kInternal, "sha256: OpenSSL EVP_Digest failed");
  }
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * digest_size);
  for (unsigned int i = 0; i < digest_size; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return hex;
}

std::string sha256_hex(const torch::Tensor& tensor) {
  torch::Tensor bytes = tensor.to(torch::kCPU).contiguous();
  return sha256_hex(bytes.data_ptr(), bytes.numel() * bytes.element_size());
}

}  // namespace rankone

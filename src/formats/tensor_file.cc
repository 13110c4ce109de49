// Format detection and the TensorFile accessors.
#include "rankone/formats/tensor_file.h"

#include "formats/file_io.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "rankone/error.h"

#include <string_view>

namespace rankone {

namespace {
// Shorter than any checkpoint: a safetensors file is at least 8 + 2 bytes ("{}") and a
// PyTorch checkpoint starts with a 30-byte zip header or a 14-byte pickled magic number.
constexpr size_t kMinFileBytes = 10;
constexpr std::string_view kGitLfsPrefix = "version https://git-lfs";

std::string hex_byte(unsigned char byte) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return std::string{kDigits[byte >> 4], kDigits[byte & 15]};
}
}  // namespace

std::string format_name(TensorFileFormat format) {
  switch (format) {
    case TensorFileFormat::kTorchZip:
      return "pytorch-zip";
    case TensorFileFormat::kTorchLegacy:
      return "pytorch-legacy";
    case TensorFileFormat::kSafetensors:
      return "safetensors";
  }
  return "unknown";
}

const torch::Tensor& TensorFile::get(const std::string& name) const {
  auto found = tensors.find(name);
  if (found == tensors.end()) {
    throw invalid_input(path + ": tensor '" + name + "' not found (the file has " + std::to_string(names.size()) +
                        " tensors; check the model type and the checkpoint)");
  }
  return found->second;
}

TensorFile load_tensor_file(const std::string& path) {
  std::string bytes = formats::read_file_bytes(path);
  if (bytes.size() < kMinFileBytes) {
    throw invalid_input(path + ": the file has only " + std::to_string(bytes.size()) +
                        " bytes, too few for a PyTorch checkpoint or a safetensors file "
                        "(it may be truncated, so download or copy it again)");
  }

  if (formats::looks_like_zip(bytes)) return formats::load_torch_zip(bytes, path);
  if (formats::looks_like_pickle(bytes)) return formats::load_torch_legacy(bytes, path);
  if (formats::looks_like_safetensors(bytes)) return parse_safetensors(bytes, path);

  if (bytes.compare(0, kGitLfsPrefix.size(), kGitLfsPrefix) == 0) {
    throw invalid_input(path + ": this is a Git LFS pointer, not the weights (run `git lfs pull` to fetch the file)");
  }
  std::string first_bytes;
  for (size_t i = 0; i < 8; ++i) first_bytes += (i ? " " : "") + hex_byte(static_cast<unsigned char>(bytes[i]));
  throw invalid_input(path + ": unknown file format: it starts with the bytes " + first_bytes +
                      " (rankone reads PyTorch checkpoints written by torch.save, which start with a zip header "
                      "or a pickled magic number, and safetensors files)");
}

}  // namespace rankone

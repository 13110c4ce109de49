// Loading and saving named tensors: PyTorch checkpoints (zip and legacy
// formats, read through a restricted pickle reader) and safetensors.
//
//   rankone::TensorFile file = rankone::load_tensor_file("generator.pt");
//   const torch::Tensor& w = file.get("generator_deconv.1.0.weight");
//
// Nested dictionaries are flattened with "." (`{"g_ema": {"conv1.weight": t}}`
// becomes "g_ema.conv1.weight"), list items by their index.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace rankone {

enum class TensorFileFormat { kTorchZip, kTorchLegacy, kSafetensors };

/// Human-readable format name: "pytorch-zip", "pytorch-legacy", "safetensors".
std::string format_name(TensorFileFormat format);

/// A flat name -> tensor map read from one file. Tensors are CPU tensors that own their memory.
struct TensorFile {
  std::string path;
  TensorFileFormat format = TensorFileFormat::kSafetensors;
  std::vector<std::string> names;  // in file order
  std::unordered_map<std::string, torch::Tensor> tensors;
  /// safetensors `__metadata__`; for checkpoints, non-tensor leaves (numbers, strings) as text.
  std::map<std::string, std::string> metadata;

  bool contains(const std::string& name) const { return tensors.count(name) != 0; }
  /// Returns the tensor; throws an invalid-input Error naming the file and the tensor when absent.
  const torch::Tensor& get(const std::string& name) const;
};

/// Loads a PyTorch checkpoint (zip or legacy) or a safetensors file, choosing by content.
/// Throws rankone::Error naming the file and the problem for missing, truncated, hostile
/// or unsupported files. Never runs code from the file.
/// safetensors U16 and U32 tensors are widened to int32 and int64, which libtorch 1.13 has.
/// NOTE: the whole file is read into memory first, so peak memory is about twice the file size.
TensorFile load_tensor_file(const std::string& path);

/// Writes tensors (CPU, any dtype safetensors supports) in the given order with string metadata.
/// Writes to a temporary file in the same folder and renames it, so `path` is never half written.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Parses safetensors bytes already in memory (used for requests and uploads).
TensorFile parse_safetensors(const std::string& bytes, const std::string& source_name);

}  // namespace rankone

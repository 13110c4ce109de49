// Patches: an edit saved as a small safetensors file (D, Lambda and metadata),
// and a stack that applies patches to a generator and reverts them exactly.
#pragma once

#include "rankone/models/generator.h"
#include "rankone/rewriting/rewriter.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace rankone {

struct Patch {
  int layer = 0;
  std::string layer_name, weight_name;
  torch::Tensor d;       // [r, C_in] float32
  torch::Tensor lambda;  // [C_out, r, k, k] float32
  std::string base_weight_sha256;  // sha256 of the layer's canonical weight in the unpatched model
  std::string model_source;        // informational
  nlohmann::json request, solver, result;  // what produced the edit

  /// The weight change einsum(Lambda, D) [C_out, C_in, k, k].
  torch::Tensor delta() const;
};

/// Builds a patch from a solved edit. `base_weight` is the layer's weight in the unpatched model.
Patch make_patch(const Generator& generator, const EditResult& result, const nlohmann::json& request,
                 const torch::Tensor& base_weight);

/// Writes a patch atomically. Tensors "d" and "lambda"; metadata "rankone_patch" (format version),
/// "layer", "layer_name", "weight_name", "base_weight_sha256", "model", "request", "solver", "result".
void save_patch(const std::string& path, const Patch& patch);
/// Reads and validates a patch file; throws an invalid-input Error naming the file and the field.
Patch load_patch(const std::string& path);

/// Applies patches to a generator on top of its weights as loaded; reverting restores those
/// weights bit for bit because the stack keeps them and recomputes from them.
class PatchStack {
 public:
  explicit PatchStack(Generator& generator) : generator_(generator) {}

  /// Checks that `patch` was made for this model (layer, shape, base weight hash) and applies it,
  /// scaled by `strength`. Throws an invalid-input Error and changes nothing otherwise.
  void apply(const Patch& patch, double strength = 1.0);
  /// Removes the last applied patch; returns false when none is applied.
  bool revert_last();
  /// Restores every patched layer to its weight as loaded.
  void revert_all();
  size_t size() const { return applied_.size(); }
  const std::vector<std::pair<Patch, double>>& applied() const { return applied_; }
  /// The layer's weight before any patch (canonical layout).
  torch::Tensor base_weight(int layer);

 private:
  void rebuild(int layer);

  Generator& generator_;
  std::map<int, torch::Tensor> base_weights_;
  std::vector<std::pair<Patch, double>> applied_;
};

}  // namespace rankone

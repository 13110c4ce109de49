#include "rankone/rewriting/patch.h"

#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"

#include <ATen/ATen.h>

namespace rankone {

namespace {
constexpr const char* kPatchFormat = "1";
}

torch::Tensor Patch::delta() const { return delta_of(lambda, d); }

Patch make_patch(const Generator& generator, const EditResult& result, const nlohmann::json& request,
                 const torch::Tensor& base_weight) {
  const LayerInfo& info = generator.layer(result.layer);
  Patch patch;
  patch.layer = result.layer;
  patch.layer_name = info.name;
  patch.weight_name = info.weight_name;
  patch.d = result.d.contiguous();
  patch.lambda = result.lambda.contiguous();
  patch.base_weight_sha256 = sha256_hex(base_weight.contiguous());
  patch.model_source = generator.source();
  patch.request = request;
  patch.solver = {{"solver", result.solver}, {"steps", result.steps}, {"rank", result.rank}};
  patch.result = {{"goal_loss_initial", result.goal_loss_initial},
                  {"goal_loss_final", result.goal_loss_final},
                  {"seconds", result.seconds}};
  return patch;
}

void save_patch(const std::string& path, const Patch& patch) {
  save_safetensors(path, {{"d", patch.d}, {"lambda", patch.lambda}},
                   {{"rankone_patch", kPatchFormat},
                    {"layer", std::to_string(patch.layer)},
                    {"layer_name", patch.layer_name},
                    {"weight_name", patch.weight_name},
                    {"base_weight_sha256", patch.base_weight_sha256},
                    {"model", patch.model_source},
                    {"request", patch.request.dump()},
                    {"solver", patch.solver.dump()},
                    {"result", patch.result.dump()}});
}

Patch load_patch(const std::string& path) {
  TensorFile file = load_tensor_file(path);
  auto meta = [&](const char* name) -> const std::string& {
    auto it = file.metadata.find(name);
    if (it == file.metadata.end()) {
      throw invalid_input(path + ": not a rankone patch (metadata field '" + std::string(name) + "' is missing)");
    }
    return it->second;
  };
  if (meta("rankone_patch") != kPatchFormat) {
    throw invalid_input(path + ": patch format version " + meta("rankone_patch") + " is not supported (expected " +
                        kPatchFormat + ")");
  }
  Patch patch;
  try {
    patch.layer = std::stoi(meta("layer"));
    patch.request = nlohmann::json::parse(meta("request"));
    patch.solver = nlohmann::json::parse(meta("solver"));
    patch.result = nlohmann::json::parse(meta("result"));
  } catch (const std::exception& e) {
    throw invalid_input(path + ": corrupt patch metadata (" + e.what() + ")");
  }
  patch.layer_name = meta("layer_name");
  patch.weight_name = meta("weight_name");
  patch.base_weight_sha256 = meta("base_weight_sha256");
  patch.model_source = meta("model");
  patch.d = file.get("d").to(at::kFloat).contiguous();
  patch.lambda = file.get("lambda").to(at::kFloat).contiguous();
  if (patch.d.dim() != 2 || patch.lambda.dim() != 4 || patch.lambda.size(1) != patch.d.size(0)) {
    throw invalid_input(path + ": tensors 'd' [r, C_in] and 'lambda' [C_out, r, k, k] have inconsistent shapes");
  }
  if (!at::isfinite(patch.d).all().item<bool>() || !at::isfinite(patch.lambda).all().item<bool>()) {
    throw invalid_input(path + ": patch contains NaN or infinite values");
  }
  return patch;
}

torch::Tensor PatchStack::base_weight(int layer) {
  auto it = base_weights_.find(layer);
  if (it == base_weights_.end()) it = base_weights_.emplace(layer, generator_.weight(layer)).first;
  return it->second;
}

void PatchStack::apply(const Patch& patch, double strength) {
  const LayerInfo& info = generator_.layer(patch.layer);
  std::string model = generator_.source();
  if (patch.weight_name != info.weight_name) {
    throw invalid_input("patch for layer " + std::to_string(patch.layer) + " edits '" + patch.weight_name +
                        "' but this model's layer " + std::to_string(patch.layer) + " is '" + info.weight_name +
                        "': the patch was made for another model (" + patch.model_source + ")");
  }
  at::Tensor base = base_weight(patch.layer);
  if (patch.d.size(1) != base.size(1) || patch.lambda.size(0) != base.size(0) || patch.lambda.size(2) != base.size(2) ||
      patch.lambda.size(3) != base.size(3)) {
    throw invalid_input("patch shapes do not fit layer " + std::to_string(patch.layer) + " of " + model +
                        ": the patch was made for another model (" + patch.model_source + ")");
  }
  if (sha256_hex(base) != patch.base_weight_sha256) {
    throw invalid_input("patch was made for another model: layer " + std::to_string(patch.layer) +
                        "'s weight differs from the one the patch was solved on (" + patch.model_source + ")");
  }
  if (!std::isfinite(strength) || std::abs(strength) > 100) {
    throw invalid_input("patch strength " + std::to_string(strength) + " is out of range -100 to 100");
  }
  applied_.emplace_back(patch, strength);
  rebuild(patch.layer);
}

bool PatchStack::revert_last() {
  if (applied_.empty()) return false;
  int layer = applied_.back().first.layer;
  applied_.pop_back();
  rebuild(layer);
  return true;
}

void PatchStack::revert_all() {
  applied_.clear();
  for (const auto& [layer, weight] : base_weights_) generator_.set_weight(layer, weight);
}

void PatchStack::rebuild(int layer) {
  at::Tensor weight = base_weight(layer);
  bool patched = false;
  for (const auto& [patch, strength] : applied_) {
    if (patch.layer != layer) continue;
    weight = weight + strength * patch.delta();
    patched = true;
  }
  generator_.set_weight(layer, patched ? weight : base_weight(layer));
}

}  // namespace rankone

#include "rankone/rewriting/evaluation.h"

#include "formats/file_io.h"
#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/rewriting/request.h"
#include "rankone/rewriting/rewriter.h"
#include "rewriting/evaluation_report.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>

namespace rankone {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr char kPartialFile[] = "partial.safetensors";
constexpr char kPartialFormat[] = "1";
constexpr int64_t kMaxChunkSize = 4096;

// The base and patched weights of every layer the patches edit, so that one generator can
// produce both the original and the edited images.
class WeightSwitch {
 public:
  WeightSwitch(Generator& generator, const std::vector<EvaluatedPatch>& patches) : generator_(generator) {
    PatchStack stack(generator);
    for (const EvaluatedPatch& patch : patches) {
      try {
        stack.apply(patch.patch);
      } catch (const Error& e) {
        stack.revert_all();
        throw Error(e.kind(), patch.path + ": " + e.what());
      }
    }
    for (const EvaluatedPatch& patch : patches) {
      int layer = patch.patch.layer;
      if (edited_.count(layer) == 0) {
        edited_[layer] = generator.weight(layer);
        base_[layer] = stack.base_weight(layer);
      }
    }
    stack.revert_all();
  }
  ~WeightSwitch() { use_base(); }
  WeightSwitch(const WeightSwitch&) = delete;
  WeightSwitch& operator=(const WeightSwitch&) = delete;

  void use_base() {
    for (const auto& [layer, weight] : base_) generator_.set_weight(layer, weight);
  }
  void use_edited() {
    for (const auto& [layer, weight] : edited_) generator_.set_weight(layer, weight);
  }

 private:
  Generator& generator_;
  std::map<int, torch::Tensor> base_, edited_;
};

// Before and after images of `indices` with the relative response and the change per pixel.
evaluation::ComparedSamples compare_samples(Generator& generator, WeightSwitch& weights,
                                            const std::vector<EvaluatedPatch>& patches,
                                            const std::vector<int64_t>& indices, const SamplingSettings& sampling) {
  evaluation::ComparedSamples compared;
  compared.indices = indices;
  SampleBatch batch = generator.latents(indices, sampling);
  int64_t size = generator.image_size();

  weights.use_base();
  compared.before = generator.generate(batch, sampling);
  at::Tensor response;
  for (const EvaluatedPatch& patch : patches) {
    at::Tensor keys = generator.run_context_key(patch.patch.layer, batch, sampling);
    at::Tensor map = relative_response(keys, patch).unsqueeze(1);  // [B, 1, H, W]
    map = at::upsample_bilinear2d(map, {size, size}, /*align_corners=*/false).squeeze(1);
    response = response.defined() ? at::maximum(response, map) : map;
  }
  compared.response = response;

  weights.use_edited();
  compared.after = generator.generate(batch, sampling);
  weights.use_base();
  compared.change = (compared.after - compared.before).abs().mean(1);
  return compared;
}

// Settings that decide the per-sample results. Partial results are reused only when they match.
json settings_key(const Generator& generator, const std::vector<EvaluatedPatch>& patches,
                  const Discriminator* discriminator, const EvaluationSettings& settings) {
  json patch_hashes = json::array();
  for (const EvaluatedPatch& patch : patches) patch_hashes.push_back(patch.file_sha256);
  return {{"model", generator.fingerprint()},
          {"patches", patch_hashes},
          {"samples", {{"count", settings.samples.size()},
                       {"sha256", sha256_hex(settings.samples.data(), settings.samples.size() * sizeof(int64_t))}}},
          {"threshold", settings.threshold},
          {"sampling", settings.sampling.to_json()},
          {"discriminator", discriminator ? discriminator->fingerprint() : std::string()}};
}

std::vector<std::pair<std::string, torch::Tensor>> measure_tensors(const SampleMeasures& m) {
  return {{"max_response", m.max_response}, {"region_pixels", m.region_pixels},
          {"change_inside", m.change_inside}, {"change_outside", m.change_outside},
          {"logit_before", m.logit_before},   {"logit_after", m.logit_after},
          {"done", m.done.to(at::kByte)}};
}

void save_partial(const std::string& path, const SampleMeasures& measures, const json& key) {
  save_safetensors(path, measure_tensors(measures), {{"rankone_evaluation", kPartialFormat}, {"settings", key.dump()}});
}

// Reads saved partial results, or returns nothing done when there are none.
SampleMeasures load_partial(const std::string& path, const json& key, int64_t count) {
  SampleMeasures measures = SampleMeasures::empty(count);
  if (!fs::exists(path)) return measures;
  const std::string fix = " (rerun with --restart to discard them, or choose another output folder)";

  TensorFile file;
  try {
    file = load_tensor_file(path);
  } catch (const Error& e) {
    throw invalid_input(std::string(e.what()) + ": the partial results cannot be read" + fix);
  }
  auto format = file.metadata.find("rankone_evaluation");
  auto saved = file.metadata.find("settings");
  if (format == file.metadata.end() || format->second != kPartialFormat || saved == file.metadata.end()) {
    throw invalid_input(path + ": not a rankone partial evaluation file" + fix);
  }
  json saved_key = json::parse(saved->second, nullptr, /*allow_exceptions=*/false);
  if (saved_key != key) {
    std::string differ;
    for (const auto& [name, value] : key.items()) {
      if (!saved_key.is_object() || !saved_key.contains(name) || saved_key[name] != value) {
        differ += (differ.empty() ? "" : ", ") + name;
      }
    }
    throw invalid_input(path + ": partial results were made with other settings (" +
                        (differ.empty() ? std::string("format") : differ) + " differ)" + fix);
  }

  std::map<std::string, torch::Tensor*> targets = {
      {"max_response", &measures.max_response}, {"region_pixels", &measures.region_pixels},
      {"change_inside", &measures.change_inside}, {"change_outside", &measures.change_outside},
      {"logit_before", &measures.logit_before},   {"logit_after", &measures.logit_after}};
  for (const auto& [name, target] : targets) {
    const at::Tensor& tensor = file.get(name);
    if (tensor.sizes() != at::IntArrayRef{count}) {
      throw invalid_input(path + ": tensor '" + name + "' does not have one value per sample" + fix);
    }
    *target = tensor.to(at::kDouble).clone();
  }
  const at::Tensor& done = file.get("done");
  if (done.sizes() != at::IntArrayRef{count}) {
    throw invalid_input(path + ": tensor 'done' does not have one value per sample" + fix);
  }
  measures.done = done.to(at::kBool).clone();
  return measures;
}

// Positions (into settings.samples) of the `count` samples with the largest (or smallest)
// mean change, among those measured.
std::vector<int64_t> ranked_positions(const at::Tensor& mean_change, int64_t count, bool largest) {
  count = std::min<int64_t>(count, mean_change.size(0));
  at::Tensor positions = std::get<1>(mean_change.topk(count, 0, largest, /*sorted=*/true));
  std::vector<int64_t> result(positions.data_ptr<int64_t>(), positions.data_ptr<int64_t>() + count);
  return result;
}

json describe_values(const at::Tensor& values) {
  if (values.numel() == 0) return nullptr;
  at::Tensor sorted = std::get<0>(values.sort());
  auto quantile = [&](double q) {
    int64_t index = std::min<int64_t>(values.numel() - 1, static_cast<int64_t>(std::floor(q * (values.numel() - 1))));
    return sorted[index].item<double>();
  };
  return {{"mean", values.mean().item<double>()}, {"min", quantile(0)},      {"median", quantile(0.5)},
          {"p90", quantile(0.9)},                  {"p99", quantile(0.99)}, {"max", quantile(1)}};
}

json discriminator_summary(const at::Tensor& before, const at::Tensor& after) {
  if (before.numel() == 0) return nullptr;
  return {{"mean_logit_before", before.mean().item<double>()},
          {"mean_logit_after", after.mean().item<double>()},
          {"mean_logit_change", (after - before).mean().item<double>()},
          {"mean_probability_before", at::sigmoid(before).mean().item<double>()},
          {"mean_probability_after", at::sigmoid(after).mean().item<double>()},
          {"fraction_real_before", (before > 0).to(at::kDouble).mean().item<double>()},
          {"fraction_real_after", (after > 0).to(at::kDouble).mean().item<double>()}};
}

json summarize(const Generator& generator, const std::vector<EvaluatedPatch>& patches,
               const Discriminator* discriminator, const EvaluationSettings& settings, const SampleMeasures& m) {
  const double pixels = static_cast<double>(generator.image_size() * generator.image_size());
  const int64_t count = m.region_pixels.size(0);
  at::Tensor applies = m.region_pixels > 0;
  at::Tensor mean_change = (m.change_inside + m.change_outside) / pixels;

  json patch_list = json::array();
  for (const EvaluatedPatch& patch : patches) {
    patch_list.push_back({{"path", patch.path},
                          {"sha256", patch.file_sha256},
                          {"layer", patch.patch.layer},
                          {"rank", patch.patch.d.size(0)},
                          {"context_response", patch.context_response},
                          {"threshold_response", settings.threshold * patch.context_response}});
  }

  double region_total = m.region_pixels.sum().item<double>();
  double outside_total = pixels * count - region_total;
  auto per_pixel = [](double sum, double n) -> json { return n > 0 ? json(sum / n) : json(nullptr); };
  json inside = per_pixel(m.change_inside.sum().item<double>(), region_total);
  json outside = per_pixel(m.change_outside.sum().item<double>(), outside_total);
  auto eight_bit = [](const json& value) -> json { return value.is_null() ? value : json(value.get<double>() * 127.5); };

  json report = {
      {"model", generator.source()},
      {"model_fingerprint", generator.fingerprint()},
      {"samples", {{"list", settings.samples_text}, {"count", count}}},
      {"sampling", settings.sampling.to_json()},
      {"patches", patch_list},
      {"threshold", settings.threshold},
      {"rule_applies",
       {{"count", applies.sum().item<int64_t>()},
        {"fraction", applies.to(at::kDouble).mean().item<double>()},
        {"max_relative_response", describe_values(m.max_response)}}},
      {"pixel_change",
       {{"units", "mean |after - before| over RGB per pixel, generator range [-1, 1]; the _8bit values are "
                  "in 0-255 levels"},
        {"inside", inside},
        {"outside", outside},
        {"inside_8bit", eight_bit(inside)},
        {"outside_8bit", eight_bit(outside)},
        {"region_fraction_of_pixels", region_total / (pixels * count)},
        {"per_sample_mean", describe_values(mean_change)},
        {"per_sample_mean_where_rule_applies", describe_values(mean_change.index({applies}))},
        {"per_sample_mean_elsewhere", describe_values(mean_change.index({~applies}))}}},
  };

  if (discriminator) {
    json realism = discriminator_summary(m.logit_before, m.logit_after);
    realism["path"] = discriminator->source();
    realism["where_rule_applies"] =
        discriminator_summary(m.logit_before.index({applies}), m.logit_after.index({applies}));
    report["discriminator"] = realism;
  } else {
    report["discriminator"] = nullptr;
  }

  json per_sample = {{"index", settings.samples}};
  for (const auto& [name, tensor] : measure_tensors(m)) {
    if (name == "done" || (!discriminator && name.rfind("logit", 0) == 0)) continue;
    at::Tensor values = tensor.to(at::kDouble).contiguous();
    per_sample[name] = std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
  }
  report["per_sample"] = per_sample;
  return report;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void EvaluationSettings::validate() const {
  if (samples.empty()) throw invalid_input("evaluation: no samples to compare (give a sample list such as 0-999)");
  if (!(threshold > 0 && std::isfinite(threshold))) {
    throw invalid_input("evaluation: threshold " + std::to_string(threshold) +
                        " must be a positive fraction of the context response (e.g. 0.5)");
  }
  if (chunk_size < 1 || chunk_size > kMaxChunkSize) {
    throw invalid_input("evaluation: chunk size " + std::to_string(chunk_size) + " is out of range 1 to " +
                        std::to_string(kMaxChunkSize));
  }
  if (grid_samples < 1 || grid_samples > 64) {
    throw invalid_input("evaluation: grid size " + std::to_string(grid_samples) + " is out of range 1 to 64");
  }
  sampling.validate();
}

SampleMeasures SampleMeasures::empty(int64_t count) {
  SampleMeasures m;
  m.max_response = at::zeros({count}, at::kDouble);
  m.region_pixels = at::zeros({count}, at::kDouble);
  m.change_inside = at::zeros({count}, at::kDouble);
  m.change_outside = at::zeros({count}, at::kDouble);
  m.logit_before = at::full({count}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  m.logit_after = at::full({count}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  m.done = at::zeros({count}, at::kBool);
  return m;
}

torch::Tensor relative_response(const torch::Tensor& keys, const EvaluatedPatch& patch) {
  at::Tensor projected = at::einsum("rc,bchw->brhw", {patch.patch.d.to(keys.scalar_type()), keys});
  return (at::linalg_vector_norm(projected, 2, {1}) / patch.context_response).to(at::kFloat);
}

std::vector<EvaluatedPatch> load_evaluated_patches(Generator& generator, const std::vector<std::string>& paths) {
  torch::NoGradGuard no_grad;
  if (paths.empty()) throw invalid_input("evaluation: give at least one patch file");
  std::vector<EvaluatedPatch> patches;
  for (const std::string& path : paths) {
    EvaluatedPatch evaluated;
    evaluated.path = path;
    std::string bytes = formats::read_file_bytes(path);
    evaluated.file_sha256 = sha256_hex(bytes.data(), bytes.size());
    evaluated.patch = load_patch(path);
    const Patch& patch = evaluated.patch;
    PatchStack stack(generator);
    try {
      stack.apply(patch);
    } catch (const Error& e) {
      throw Error(e.kind(), path + ": " + e.what());
    }
    stack.revert_all();

    // The context response is the scale against which every sample's response is measured.
    if (!patch.request.is_object() || patch.request.empty()) {
      throw invalid_input(path + ": the patch contains no request, so the response at its context is unknown "
                                 "(evaluate patches written by `rankone edit`)");
    }
    Request request = Request::from_json(patch.request, path + " (saved request)");
    auto [keys, weights] = context_keys(generator, patch.layer, request);
    at::Tensor response = at::linalg_vector_norm(at::matmul(keys, patch.d.t()), 2, {1});
    evaluated.context_response = ((response * weights).sum() / weights.sum()).item<double>();
    if (!(evaluated.context_response > 1e-12) || !std::isfinite(evaluated.context_response)) {
      throw invalid_input(path + ": the keys under the request's context masks give no response to the patch's "
                                 "directions (" + std::to_string(evaluated.context_response) +
                          "), so the region where the rule applies cannot be measured");
    }
    patches.push_back(std::move(evaluated));
  }
  return patches;
}

EvaluationResult evaluate_edit(Generator& generator, const std::vector<std::string>& patch_paths,
                               const Discriminator* discriminator, const EvaluationSettings& settings,
                               const std::string& out_dir, const ProgressCallback& progress) {
  torch::NoGradGuard no_grad;
  settings.validate();
  if (discriminator && discriminator->image_size() != generator.image_size()) {
    throw invalid_input("discriminator " + discriminator->source() + " scores " +
                        std::to_string(discriminator->image_size()) + " pixel images but the model draws " +
                        std::to_string(generator.image_size()) + " pixel images");
  }
  std::error_code error;
  fs::create_directories(out_dir, error);
  if (!fs::is_directory(out_dir)) {
    throw invalid_input("evaluation: cannot create the output folder " + out_dir +
                        (error ? " (" + error.message() + ")" : std::string()));
  }

  // patches, weights and saved partial results
  EvaluationResult result;
  result.patches = load_evaluated_patches(generator, patch_paths);
  WeightSwitch weights(generator, result.patches);
  const int64_t count = static_cast<int64_t>(settings.samples.size());
  const std::string partial_path = (fs::path(out_dir) / kPartialFile).string();
  json key = settings_key(generator, result.patches, discriminator, settings);
  if (settings.restart) fs::remove(partial_path, error);
  SampleMeasures& m = result.measures;
  m = load_partial(partial_path, key, count);
  result.resumed = m.done.sum().item<int64_t>();

  // chunks of the samples not yet measured
  std::vector<int64_t> pending;
  const bool* done = m.done.data_ptr<bool>();
  for (int64_t i = 0; i < count; ++i) {
    if (!done[i]) pending.push_back(i);
  }
  const double pixels = static_cast<double>(generator.image_size() * generator.image_size());
  auto started = std::chrono::steady_clock::now();
  int64_t finished = result.resumed;
  for (size_t start = 0; start < pending.size(); start += settings.chunk_size) {
    size_t end = std::min(pending.size(), start + static_cast<size_t>(settings.chunk_size));
    std::vector<int64_t> positions(pending.begin() + start, pending.begin() + end);
    std::vector<int64_t> indices;
    for (int64_t position : positions) indices.push_back(settings.samples[position]);

    evaluation::ComparedSamples compared = compare_samples(generator, weights, result.patches, indices,
                                                           settings.sampling);
    at::Tensor region = compared.response >= settings.threshold;  // [B, S, S]
    at::Tensor change = compared.change.to(at::kDouble);
    at::Tensor region_pixels = region.sum({1, 2}).to(at::kDouble);
    at::Tensor inside = (change * region).sum({1, 2});
    at::Tensor outside = change.sum({1, 2}) - inside;
    at::Tensor max_response = compared.response.amax({1, 2}).to(at::kDouble);
    at::Tensor logit_before, logit_after;
    if (discriminator) {
      logit_before = discriminator->logits(compared.before).to(at::kDouble);
      logit_after = discriminator->logits(compared.after).to(at::kDouble);
    }
    for (size_t i = 0; i < positions.size(); ++i) {
      int64_t p = positions[i];
      m.max_response[p] = max_response[i];
      m.region_pixels[p] = region_pixels[i];
      m.change_inside[p] = inside[i];
      m.change_outside[p] = outside[i];
      if (discriminator) {
        m.logit_before[p] = logit_before[i];
        m.logit_after[p] = logit_after[i];
      }
      m.done[p] = true;
    }
    finished += static_cast<int64_t>(positions.size());
    save_partial(partial_path, m, key);

    Progress report{"evaluate", static_cast<long>(finished), static_cast<long>(count), -1.0, seconds_since(started)};
    if (progress && !progress(report) && finished < count) {
      throw Error(ErrorKind::kConflict, "evaluation interrupted after " + std::to_string(finished) + " of " +
                                            std::to_string(count) + " samples; the results so far are in " +
                                            partial_path + ", and running the same command again resumes from them");
    }
  }

  // report
  result.report = summarize(generator, result.patches, discriminator, settings, m);
  at::Tensor mean_change = (m.change_inside + m.change_outside) / pixels;
  auto grid_of = [&](bool largest) {
    std::vector<int64_t> indices;
    for (int64_t position : ranked_positions(mean_change, settings.grid_samples, largest)) {
      indices.push_back(settings.samples[position]);
    }
    return compare_samples(generator, weights, result.patches, indices, settings.sampling);
  };
  evaluation::ComparedSamples most = grid_of(true), least = grid_of(false);
  result.report["most_changed"] = most.indices;
  result.report["least_changed"] = least.indices;
  evaluation::write_report(out_dir, result.report, m, most, least, settings.threshold, discriminator != nullptr);
  return result;
}

}  // namespace rankone

#include "rankone/rewriting/statistics.h"

#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <numeric>

namespace rankone {

namespace fs = std::filesystem;

SecondMoment compute_second_moment(const Generator& generator, int layer, const SamplingSettings& sampling,
                                   const StatisticsSettings& settings, const ProgressCallback& progress) {
  torch::NoGradGuard no_grad;
  const LayerInfo& info = generator.layer(layer);
  int64_t batch_size = settings.effective_batch_size(sampling);
  auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };

  at::Tensor sum = at::zeros({info.key_channels, info.key_channels}, at::kDouble);
  int64_t count = 0;
  for (int64_t start = 0; start < settings.samples; start += batch_size) {
    int64_t end = std::min(settings.samples, start + batch_size);
    std::vector<int64_t> indices(end - start);
    std::iota(indices.begin(), indices.end(), start);
    at::Tensor key = generator.run_context_key(layer, generator.latents(indices, sampling), sampling);

    // [B, C, H, W] -> [C, B*H*W]; one product per batch instead of one outer product per pixel.
    at::Tensor keys = key.transpose(0, 1).reshape({info.key_channels, -1}).to(at::kDouble);
    sum.addmm_(keys, keys.t());
    count += keys.size(1);

    if (progress && !progress({"statistics", end, settings.samples, -1.0, elapsed()})) {
      throw Error(ErrorKind::kConflict, "statistics cancelled");
    }
  }
  SecondMoment moment;
  moment.c = sum / static_cast<double>(count);
  moment.count = count;
  moment.seconds = elapsed();
  if (!at::isfinite(moment.c).all().item<bool>()) {
    throw invalid_input("statistics of layer " + std::to_string(layer) +
                        " are not finite: the model produces NaN or infinite activations");
  }
  return moment;
}

std::string statistics_cache_dir() {
  if (const char* env = std::getenv("RANKONE_CACHE")) return std::string(env);
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/tmp") + "/.cache/rankone/stats";
}

SecondMoment load_or_compute_second_moment(const Generator& generator, int layer, const SamplingSettings& sampling,
                                           const StatisticsSettings& settings, const std::string& cache_dir,
                                           const ProgressCallback& progress) {
  if (cache_dir.empty()) return compute_second_moment(generator, layer, sampling, settings, progress);

  nlohmann::json key = {{"fingerprint", generator.fingerprint()},
                        {"layer", layer},
                        {"sampling", sampling.to_json()},
                        {"samples", settings.samples},
                        {"batch_size", settings.effective_batch_size(sampling)}};
  std::string key_text = key.dump();
  fs::path path = fs::path(cache_dir) / (sha256_hex(key_text.data(), key_text.size()).substr(0, 32) + ".safetensors");

  if (fs::exists(path)) {
    try {
      TensorFile file = load_tensor_file(path.string());
      at::Tensor c = file.get("c");
      auto meta = [&](const char* name) {
        auto it = file.metadata.find(name);
        if (it == file.metadata.end()) throw invalid_input("missing metadata '" + std::string(name) + "'");
        return it->second;
      };
      if (meta("key") != key_text) throw invalid_input("made for other settings");
      if (meta("c_sha256") != sha256_hex(c)) throw invalid_input("checksum mismatch");
      const LayerInfo& info = generator.layer(layer);
      if (c.scalar_type() != at::kDouble || c.sizes() != at::IntArrayRef({info.key_channels, info.key_channels})) {
        throw invalid_input("wrong shape or dtype");
      }
      SecondMoment moment;
      moment.c = c;
      moment.count = std::stoll(meta("count"));
      moment.from_cache = true;
      spdlog::debug("statistics of layer {} read from {}", layer, path.string());
      return moment;
    } catch (const std::exception& e) {
      spdlog::warn("statistics cache {} is unusable ({}); recomputing", path.string(), e.what());
    }
  }

  SecondMoment moment = compute_second_moment(generator, layer, sampling, settings, progress);
  try {
    fs::create_directories(cache_dir);
    save_safetensors(path.string(), {{"c", moment.c}},
                     {{"key", key_text}, {"c_sha256", sha256_hex(moment.c)}, {"count", std::to_string(moment.count)}});
  } catch (const std::exception& e) {
    spdlog::warn("cannot write the statistics cache {}: {}", path.string(), e.what());
  }
  return moment;
}

}  // namespace rankone

#include "cli_common.h"

#include "rankone/error.h"
#include "rankone/formats/image.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <unistd.h>

namespace rankone::cli {

void add_model_options(CLI::App* command, ModelOptions& options, bool with_sampling) {
  command->add_option("-m,--model", options.model,
                      "model card (.json), StyleGAN2 checkpoint (.pt, .safetensors) or bundled model name")
      ->capture_default_str();
  command->add_option("--threads", options.threads, "CPU threads for libtorch; 0 uses all cores")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  if (!with_sampling) return;
  command->add_option("--latent-stream", options.latents,
                      "latent numbering: rankone (latent i = numpy RandomState(i)) or reference "
                      "(row i of RandomState(1), as the reference rewriting tool)")
      ->capture_default_str()
      ->check(CLI::IsMember({"rankone", "reference"}));
  command->add_option("--noise", options.noise,
                      "StyleGAN2 noise: sample (fixed per sample), stored (checkpoint buffers), "
                      "reference (the reference tool's batch-dependent noise) or zero")
      ->capture_default_str()
      ->check(CLI::IsMember({"sample", "stored", "reference", "zero"}));
  command->add_option("--truncation", options.truncation, "StyleGAN2 truncation psi, 0 to 2; 1 disables it")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 2.0));
}

std::unique_ptr<Generator> open_model(const ModelOptions& options) {
  int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, threads));
  spdlog::debug("libtorch threads: {}", at::get_num_threads());
  auto started = std::chrono::steady_clock::now();
  std::unique_ptr<Generator> generator = load_generator(options.model);
  spdlog::info("loaded {} ({}, {} parameters) in {:.2f} s", generator->source(), generator->architecture(),
               generator->parameter_count(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return generator;
}

SamplingSettings sampling_from(const ModelOptions& options) {
  SamplingSettings settings;
  settings.latents = options.latents;
  settings.noise = options.noise;
  settings.truncation = options.truncation;
  settings.validate();
  return settings;
}

ProgressCallback progress_bar() {
  bool terminal = isatty(fileno(stderr));
  auto last_decile = std::make_shared<long>(-1);
  return [terminal, last_decile](const Progress& p) {
    if (p.total <= 0) return true;
    double fraction = static_cast<double>(p.done) / p.total;
    std::string loss = p.loss >= 0 ? fmt::format("  loss {:.5f}", p.loss) : "";
    if (terminal) {
      int filled = static_cast<int>(fraction * 30);
      std::fprintf(stderr, "\r%-10s [%s%s] %ld/%ld  %.1f s%s", p.task.c_str(), std::string(filled, '#').c_str(),
                   std::string(30 - filled, '.').c_str(), p.done, p.total, p.seconds, loss.c_str());
      if (p.done >= p.total) std::fputc('\n', stderr);
    } else {
      long decile = static_cast<long>(fraction * 10);
      if (decile != *last_decile) {
        *last_decile = decile;
        std::fprintf(stderr, "%s: %ld/%ld (%.1f s)%s\n", p.task.c_str(), p.done, p.total, p.seconds, loss.c_str());
      }
    }
    return true;
  };
}

torch::Tensor generate_in_chunks(const Generator& generator, const SampleBatch& batch,
                                 const SamplingSettings& settings, int64_t chunk) {
  std::vector<torch::Tensor> parts;
  int64_t count = batch.z.size(0);
  for (int64_t start = 0; start < count; start += chunk) {
    int64_t end = std::min(count, start + chunk);
    SampleBatch part;
    part.z = batch.z.slice(0, start, end);
    part.indices.assign(batch.indices.begin() + start, batch.indices.begin() + end);
    parts.push_back(generator.generate(part, settings));
  }
  return torch::cat(parts, 0);
}

void require_safetensors_name(const std::string& path) {
  if (std::filesystem::path(path).extension() != ".safetensors") {
    throw invalid_input("--out " + path + ": rankone writes safetensors files, so the name must end in .safetensors");
  }
}

int automatic_scale(int64_t size) { return size >= 128 ? 1 : static_cast<int>((128 + size - 1) / size); }

void write_image_grid(const std::string& path, const torch::Tensor& images, int columns, int scale) {
  if (scale <= 0) scale = automatic_scale(images.size(3));
  std::vector<Image> tiles;
  for (int64_t i = 0; i < images.size(0); ++i) tiles.push_back(upscale(tensor_to_image(images[i]), scale));
  write_png(path, make_grid(tiles, columns, 2));
}

}  // namespace rankone::cli

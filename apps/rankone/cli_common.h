// Pieces shared by the rankone subcommands: thread setup, logging, progress bars,
// sampling options and image output.
#pragma once

#include "rankone/models/generator.h"
#include "rankone/progress.h"

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

namespace rankone::cli {

/// Options every subcommand that runs a model accepts.
struct ModelOptions {
  std::string model = "dcgan-celeba32";
  int threads = 0;  // 0: all cores
  std::string latents = "rankone";
  std::string noise = "sample";
  double truncation = 1.0;
};

/// Adds --model, --threads and the sampling options to `command`.
void add_model_options(CLI::App* command, ModelOptions& options, bool with_sampling = true);

/// Sets libtorch's thread count (0 means all cores) and loads the model.
std::unique_ptr<Generator> open_model(const ModelOptions& options);

SamplingSettings sampling_from(const ModelOptions& options);

/// A progress callback that draws a one-line bar on stderr (only when stderr is a terminal,
/// else one line per 10%).
ProgressCallback progress_bar();

/// Runs `generator` on `batch` in chunks of at most `chunk` samples (results are batch independent).
torch::Tensor generate_in_chunks(const Generator& generator, const SampleBatch& batch,
                                 const SamplingSettings& settings, int64_t chunk = 64);

/// Writes images [B, 3, H, W] as a PNG grid, each upscaled by `scale` (0: to about 128 pixels).
void write_image_grid(const std::string& path, const torch::Tensor& images, int columns, int scale);

/// Chooses an upscale factor that makes an image of `size` pixels about 128 pixels wide.
int automatic_scale(int64_t size);

/// Applies patch files in order, each scaled by `strength`.
/// Throws an invalid-input Error unless `path` ends in .safetensors, the format rankone writes.
void require_safetensors_name(const std::string& path);

void apply_patch_files(Generator& generator, const std::vector<std::string>& paths, double strength);

void add_sample_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_fetch_command(CLI::App& app);
void add_request_command(CLI::App& app);
void add_rewriting_commands(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_serve_command(CLI::App& app);

}  // namespace rankone::cli

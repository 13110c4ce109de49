// The foundation subcommands: fetch, info and sample.
#include "cli_common.h"

#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/latents.h"
#include "rankone/models/model_store.h"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

namespace rankone::cli {

void add_fetch_command(CLI::App& app) {
  struct Options {
    std::string name = "dcgan-celeba32";
    std::string local;
  };
  auto options = std::make_shared<Options>();
  const char* local_env = std::getenv("RANKONE_LOCAL_MODELS");
  if (local_env) options->local = local_env;
  CLI::App* command = app.add_subcommand(
      "fetch", "obtain a bundled model's weights into the models folder (" + models_dir() +
                   ", set RANKONE_MODELS to change), checking each file's sha256");
  command->add_option("name", options->name, "bundled model name")->capture_default_str();
  command->add_option("--from", options->local,
                      "local folder holding <name>/<file> to copy from instead of downloading "
                      "(default: $RANKONE_LOCAL_MODELS)")
      ->capture_default_str();
  command->callback([options] {
    fetch_model(options->name, options->local, [](const std::string& line) { spdlog::info("{}", line); });
  });
}

void add_info_command(CLI::App& app) {
  struct Options {
    std::string model;
    bool tensors = true;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand("info", "print what a model card or checkpoint holds");
  command->add_option("-m,--model", options->model, "model card, checkpoint, safetensors file or bundled name")
      ->required();
  command->callback([options] {
    std::string path = resolve_model_path(options->model);
    bool is_card = std::filesystem::path(path).extension() == ".json";
    std::string tensor_path = path;
    if (is_card) {
      std::unique_ptr<Generator> generator = load_generator(path);
      std::cout << generator->describe();
      return;
    }
    TensorFile file = load_tensor_file(tensor_path);
    std::cout << "file: " << file.path << "\nformat: " << format_name(file.format) << "\n";
    try {
      std::unique_ptr<Generator> generator = load_generator(path);
      std::cout << generator->describe();
    } catch (const Error& e) {
      std::cout << "architecture: unknown (" << e.what() << ")\n";
    }
    int64_t total = 0;
    for (const std::string& name : file.names) total += file.tensors.at(name).numel();
    std::cout << "tensors: " << file.names.size() << " (" << total << " numbers)\n";
    for (const std::string& name : file.names) {
      const torch::Tensor& t = file.tensors.at(name);
      std::string shape = "[";
      for (int64_t d = 0; d < t.dim(); ++d) shape += (d ? ", " : "") + std::to_string(t.size(d));
      std::cout << "  " << name << "  " << shape << "]  " << c10::toString(t.scalar_type()) << "\n";
    }
    for (const auto& [key, value] : file.metadata) std::cout << "metadata " << key << ": " << value << "\n";
  });
}

void add_sample_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string seeds = "0-63";
    std::string latents_file;
    std::string out = "samples.png";
    std::string out_tensor;
    std::vector<std::string> patches;
    double strength = 1.0;
    int columns = 8;
    int scale = 0;
    int batch = 32;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand("sample", "draw samples and write them as a PNG grid");
  add_model_options(command, options->model);
  command->add_option("--seeds,--samples", options->seeds, "sample indices, e.g. 0-63 or 1,5,9-12")
      ->capture_default_str();
  command->add_option("--latents", options->latents_file,
                      "safetensors file with a tensor 'z' [N, latent size] to use instead of --seeds");
  command->add_option("-o,--out", options->out, "PNG grid to write")->capture_default_str();
  command->add_option("--out-tensor", options->out_tensor, "also write the float images [N, 3, H, W] as safetensors");
  command->add_option("--patch", options->patches, "patch file(s) to apply first, in order (repeatable)");
  command->add_option("--strength", options->strength, "factor on every patch's update (1 = as solved)")
      ->capture_default_str();
  command->add_option("--columns", options->columns, "images per grid row")->capture_default_str()->check(
      CLI::Range(1, 1024));
  command->add_option("--scale", options->scale, "integer upscaling per image; 0 picks about 128 pixels")
      ->capture_default_str()
      ->check(CLI::Range(0, 32));
  command->add_option("--batch", options->batch, "samples per forward pass (results do not depend on it)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  command->callback([options] {
    std::unique_ptr<Generator> generator = open_model(options->model);
    SamplingSettings settings = sampling_from(options->model);
    apply_patch_files(*generator, options->patches, options->strength);

    SampleBatch batch;
    if (!options->latents_file.empty()) {
      TensorFile file = load_tensor_file(options->latents_file);
      if (!file.contains("z")) throw invalid_input(options->latents_file + ": no tensor named 'z'");
      batch.z = file.get("z").to(torch::kFloat32).contiguous();
      if (batch.z.dim() != 2 || batch.z.size(1) != generator->latent_size() || batch.z.size(0) < 1) {
        throw invalid_input(options->latents_file + ": tensor 'z' must have shape [N, " +
                            std::to_string(generator->latent_size()) + "] with N >= 1");
      }
      if (!torch::isfinite(batch.z).all().item<bool>()) {
        throw invalid_input(options->latents_file + ": tensor 'z' contains NaN or infinite values");
      }
      batch.indices.assign(batch.z.size(0), -1);
    } else {
      batch = generator->latents(parse_sample_indices(options->seeds, 100000), settings);
    }

    torch::NoGradGuard no_grad;
    auto started = std::chrono::steady_clock::now();
    torch::Tensor images = generate_in_chunks(*generator, batch, settings, options->batch);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    write_image_grid(options->out, images, options->columns, options->scale);
    if (!options->out_tensor.empty()) {
      save_safetensors(options->out_tensor, {{"images", images.contiguous()}, {"z", batch.z.contiguous()}},
                       {{"model", generator->source()}, {"sampling", settings.to_json().dump()}});
    }
    spdlog::info("wrote {} ({} images, {:.1f} images/s)", options->out, images.size(0), images.size(0) / seconds);
  });
}

}  // namespace rankone::cli

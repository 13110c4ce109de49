// The rewriting subcommands: stats, edit, apply and compare.
#include "cli_common.h"

#include "rankone/error.h"
#include "rankone/formats/image.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/latents.h"
#include "rankone/models/model_store.h"
#include "rankone/rewriting/masks.h"
#include "rankone/rewriting/patch.h"
#include "rankone/rewriting/rewriter.h"
#include "rankone/rewriting/statistics.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <iostream>

namespace rankone::cli {

void apply_patch_files(Generator& generator, const std::vector<std::string>& paths, double strength) {
  if (paths.empty()) return;
  // The stack lives as long as the process: the generator keeps the patched weights.
  static std::vector<std::unique_ptr<PatchStack>> stacks;
  stacks.push_back(std::make_unique<PatchStack>(generator));
  for (const std::string& path : paths) {
    Patch patch = load_patch(path);
    try {
      stacks.back()->apply(patch, strength);
    } catch (const Error& e) {
      throw Error(e.kind(), path + ": " + e.what());
    }
    spdlog::info("applied {} (layer {}, strength {})", path, patch.layer, strength);
  }
}

namespace {

struct StatisticsOptions {
  int64_t samples = 1000;
  int64_t batch = 0;
  std::string cache_dir = statistics_cache_dir();
  bool no_cache = false;
};

void add_statistics_options(CLI::App* command, StatisticsOptions& options) {
  command->add_option("--stats-samples", options.samples, "samples for the second-moment statistics")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  command->add_option("--stats-batch", options.batch,
                      "samples per batch for the statistics; 0 picks 10 with reference noise, else 50")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{4096}));
  command->add_option("--cache-dir", options.cache_dir, "statistics cache folder (default: $RANKONE_CACHE)")
      ->capture_default_str();
  command->add_flag("--no-cache", options.no_cache, "compute the statistics without reading or writing the cache");
}

void add_stats_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    StatisticsOptions statistics;
    int layer = -1;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand("stats", "compute (or read from the cache) a layer's key statistics");
  add_model_options(command, options->model);
  add_statistics_options(command, options->statistics);
  command->add_option("-l,--layer", options->layer, "layer number; -1 uses the model's default")->capture_default_str();
  command->callback([options] {
    std::unique_ptr<Generator> generator = open_model(options->model);
    SamplingSettings sampling = sampling_from(options->model);
    int layer = options->layer < 0 ? generator->default_layer() : options->layer;
    StatisticsSettings settings{options->statistics.samples, options->statistics.batch};
    SecondMoment moment = load_or_compute_second_moment(
        *generator, layer, sampling, settings, options->statistics.no_cache ? "" : options->statistics.cache_dir,
        progress_bar());
    at::Tensor eigenvalues = at::linalg_eigvalsh(moment.c);
    std::cout << "layer " << layer << ": " << moment.count << " keys of " << moment.c.size(0) << " channels, "
              << (moment.from_cache ? "read from the cache" : fmt::format("computed in {:.2f} s ({:.0f} samples/s)",
                                                                           moment.seconds,
                                                                           settings.samples / moment.seconds))
              << "; eigenvalues " << fmt::format("{:.4g} to {:.4g}", eigenvalues.min().item<double>(),
                                                  eigenvalues.max().item<double>())
              << "\n";
  });
}

void add_edit_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    StatisticsOptions statistics;
    std::string request;
    std::string out;
    int layer = -1, rank = 0, steps = 0, piter = 0;
    std::string solver;
    double lr = 0;
    bool json = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand("edit", "solve an edit request and write the patch");
  add_model_options(command, options->model, /*with_sampling=*/false);
  add_statistics_options(command, options->statistics);
  command->add_option("-r,--request", options->request, "request JSON (reference UI format plus rankone fields)")
      ->required();
  command->add_option("-o,--out", options->out, "patch file to write (.safetensors)")->required();
  CLI::Option* layer = command->add_option(
      "-l,--layer", options->layer, "layer to rewrite; -1 or omitted: the request's, else the model's default");
  CLI::Option* rank = command->add_option("--rank", options->rank, "rank of the update, 1 to 64 (default: the "
                                                                   "request's, else 1)");
  command->add_option("--solver", options->solver, "direct, adam (reference optimiser) or adam-lambda (default: "
                                                   "the request's, else direct)")
      ->check(CLI::IsMember({"direct", "adam", "adam-lambda"}));
  CLI::Option* steps = command->add_option(
      "--steps", options->steps,
      "iterations: Adam steps, or the maximum for the direct solver, which stops by itself after at most 40 "
      "(default: the request's, else 2001)");
  CLI::Option* lr = command->add_option("--lr", options->lr, "Adam learning rate (default: the request's, else 0.05)");
  CLI::Option* piter =
      command->add_option("--piter", options->piter, "projection period of the adam solver, in steps (default 10)");
  command->add_flag("--json", options->json, "print one JSON object with the result instead of the summary line");
  command->callback([options, layer, rank, steps, lr, piter] {
    require_safetensors_name(options->out);
    Request request = load_request(options->request);
    if (layer->count() > 0) {
      if (options->layer < -1) {
        throw invalid_input("--layer " + std::to_string(options->layer) +
                            " is invalid: give a layer number (see `rankone info`), or -1 for the default");
      }
      if (options->layer >= 0) request.layer = options->layer;
    }
    if (rank->count() > 0) {
      if (options->rank < 1 || options->rank > 64) {
        throw invalid_input("--rank " + std::to_string(options->rank) + " is out of range 1 to 64");
      }
      request.rank = options->rank;
    }
    if (!options->solver.empty()) request.solver.solver = options->solver;
    if (steps->count() > 0) request.solver.steps = options->steps;
    if (lr->count() > 0) request.solver.lr = options->lr;
    if (piter->count() > 0) request.solver.piter = options->piter;
    request.solver.validate();
    ModelOptions model_options = options->model;
    if (model_options.model == ModelOptions().model && !request.model.empty()) model_options.model = request.model;
    if (options->statistics.samples != StatisticsOptions().samples || options->statistics.batch != 0) {
      request.statistics = {options->statistics.samples, options->statistics.batch};
    }

    std::unique_ptr<Generator> generator = open_model(model_options);
    int layer = request_layer(*generator, request);
    request.layer = layer;
    SecondMoment statistics = load_or_compute_second_moment(
        *generator, layer, request.sampling, request.statistics,
        options->statistics.no_cache ? "" : options->statistics.cache_dir, progress_bar());
    EditResult result = rewrite(*generator, request, statistics, options->json ? ProgressCallback() : progress_bar());

    if (result.goal_loss_final > result.goal_loss_initial) {
      spdlog::warn("the {} solver raised the goal loss from {:.5f} to {:.5f}; the patch is written anyway, but "
                   "the default direct solver, or a smaller --lr for adam, should do better",
                   result.solver, result.goal_loss_initial, result.goal_loss_final);
    }
    Patch patch = make_patch(*generator, result, request.to_json(), result.weight_before);
    save_patch(options->out, patch);
    nlohmann::json summary = result.summary();
    summary["statistics_seconds"] = statistics.seconds;
    summary["statistics_cached"] = statistics.from_cache;
    summary["patch"] = options->out;
    if (options->json) {
      std::cout << summary.dump() << std::endl;
    } else {
      std::cout << fmt::format("edited layer {} (rank {}, {} solver, {} steps) in {:.2f} s: goal loss {:.5f} -> "
                               "{:.5f}; wrote {}\n",
                               result.layer, result.rank, result.solver, result.steps, result.seconds,
                               result.goal_loss_initial, result.goal_loss_final, options->out);
    }
  });
}

void add_apply_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::vector<std::string> patches;
    double strength = 1.0;
    std::string out;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "apply", "write the model's checkpoint with patches applied, as safetensors (plus a model card for "
               "card-based models)");
  add_model_options(command, options->model, false);
  command->add_option("-p,--patch", options->patches, "patch file(s), applied in order")->required();
  command->add_option("--strength", options->strength, "factor on each patch's update")->capture_default_str();
  command->add_option("-o,--out", options->out, "output .safetensors file")->required();
  command->callback([options] {
    require_safetensors_name(options->out);
    std::unique_ptr<Generator> generator = open_model(options->model);
    apply_patch_files(*generator, options->patches, options->strength);

    std::string model_path = resolve_model_path(options->model.model);
    bool is_card = std::filesystem::path(model_path).extension() == ".json";
    nlohmann::json card;
    std::string weights_path = model_path;
    if (is_card) {
      std::ifstream in(model_path);
      card = nlohmann::json::parse(in);
      weights_path = resolve_card_file(model_path, card.at("weights").get<std::string>());
    }
    if (std::filesystem::weakly_canonical(weights_path) == std::filesystem::weakly_canonical(options->out)) {
      throw invalid_input("--out " + options->out + " is the model's own weights file: choose another path");
    }
    TensorFile original = load_tensor_file(weights_path);
    std::map<std::string, at::Tensor> replaced;
    for (const LayerInfo& info : generator->layers()) {
      replaced[info.weight_name] = generator->to_checkpoint_layout(info.index, generator->weight(info.index));
    }
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const std::string& name : original.names) {
      auto it = replaced.find(name);
      tensors.emplace_back(name, it != replaced.end() ? it->second : original.tensors.at(name));
    }
    nlohmann::json patches_json = options->patches;
    save_safetensors(options->out, tensors, {{"rankone_patches", patches_json.dump()},
                                             {"strength", std::to_string(options->strength)}});
    spdlog::info("wrote {}", options->out);
    if (is_card) {
      card["weights"] = std::filesystem::path(options->out).filename().string();
      card["name"] = card.value("name", "model") + "-edited";
      card.erase("files");
      std::string card_out = std::filesystem::path(options->out).replace_extension(".json").string();
      write_file_atomic(card_out, card.dump(2) + "\n");
      spdlog::info("wrote {} (use it as --model)", card_out);
    }
  });
}

void add_compare_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::vector<std::string> patches;
    double strength = 1.0;
    std::string samples = "0-15";
    std::string out = "compare.png";
    int columns = 8;
    int scale = 0;
    double threshold = 0.2;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "compare", "write a before / after grid of the same samples with the changed region outlined");
  add_model_options(command, options->model);
  command->add_option("-p,--patch", options->patches, "patch file(s), applied in order")->required();
  command->add_option("--strength", options->strength, "factor on each patch's update")->capture_default_str();
  command->add_option("--samples,--seeds", options->samples, "sample indices")->capture_default_str();
  command->add_option("-o,--out", options->out, "PNG to write")->capture_default_str();
  command->add_option("--columns", options->columns, "samples per row pair (before above, after below)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  command->add_option("--scale", options->scale, "integer upscaling; 0 picks about 128 pixels")
      ->capture_default_str();
  command->add_option("--threshold", options->threshold,
                      "pixel change (mean over RGB, image range [-1, 1]) that counts as changed")
      ->capture_default_str();
  command->callback([options] {
    std::unique_ptr<Generator> generator = open_model(options->model);
    SamplingSettings sampling = sampling_from(options->model);
    SampleBatch batch = generator->latents(parse_sample_indices(options->samples, 4096), sampling);
    torch::NoGradGuard no_grad;
    torch::Tensor before = generate_in_chunks(*generator, batch, sampling);
    apply_patch_files(*generator, options->patches, options->strength);
    torch::Tensor after = generate_in_chunks(*generator, batch, sampling);

    int scale = options->scale > 0 ? options->scale : automatic_scale(before.size(3));
    torch::Tensor change = (after - before).abs().mean(1);  // [B, H, W]
    const uint8_t outline[3] = {0, 255, 0};
    std::vector<Image> tiles;
    int64_t count = before.size(0), columns = options->columns;
    for (int64_t row = 0; row < count; row += columns) {
      for (int pass = 0; pass < 2; ++pass) {
        for (int64_t i = row; i < std::min(count, row + columns); ++i) {
          Image tile = upscale(tensor_to_image(pass == 0 ? before[i] : after[i]), scale);
          if (pass == 1) {
            torch::Tensor changed = (change[i] > options->threshold).to(torch::kFloat);
            changed = changed.repeat_interleave(scale, 0).repeat_interleave(scale, 1);
            draw_mask_outline(tile, changed, outline);
          }
          tiles.push_back(tile);
        }
        for (int64_t pad = std::min(count, row + columns) - row; pad < columns && row + columns > count; ++pad) {
          tiles.push_back(Image(tiles.back().width, tiles.back().height, 3, 255));
        }
      }
    }
    write_png(options->out, make_grid(tiles, static_cast<int>(columns), 2));
    double changed_fraction = (change > options->threshold).to(torch::kFloat).mean().item<double>();
    spdlog::info("wrote {}: rows of before (top) and after (bottom); {:.1f}% of pixels changed by more than {}",
                 options->out, 100 * changed_fraction, options->threshold);
  });
}

}  // namespace

void add_rewriting_commands(CLI::App& app) {
  add_stats_command(app);
  add_edit_command(app);
  add_apply_command(app);
  add_compare_command(app);
  add_eval_command(app);
  add_request_command(app);
}

}  // namespace rankone::cli

namespace rankone::cli {

namespace {

// Parses IMAGE:TOP,LEFT,BOTTOM,RIGHT (image pixels, bottom and right exclusive).
std::pair<int64_t, Box> parse_region(const std::string& text, const std::string& option) {
  auto fail = [&] {
    return invalid_input(option + " '" + text + "': expected IMAGE:TOP,LEFT,BOTTOM,RIGHT in image pixels, "
                         "e.g. 74:12,6,18,26");
  };
  size_t colon = text.find(':');
  if (colon == std::string::npos) throw fail();
  std::vector<int64_t> numbers;
  try {
    numbers.push_back(std::stoll(text.substr(0, colon)));
    std::string rest = text.substr(colon + 1);
    size_t start = 0;
    while (true) {
      size_t comma = rest.find(',', start);
      numbers.push_back(std::stoll(rest.substr(start, comma - start)));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  } catch (const std::logic_error&) {
    throw fail();
  }
  if (numbers.size() != 5 || numbers[0] < 0) throw fail();
  return {numbers[0], Box{numbers[1], numbers[2], numbers[3], numbers[4]}};
}

MaskedImage region_mask(const std::string& text, const std::string& option, int64_t image_size, int64_t canvas) {
  auto [image, box] = parse_region(text, option);
  if (box.empty() || box.top < 0 || box.left < 0 || box.bottom > image_size || box.right > image_size) {
    throw invalid_input(option + " '" + text + "': the box must be non-empty and inside the " +
                        std::to_string(image_size) + "x" + std::to_string(image_size) + " image");
  }
  double scale = static_cast<double>(canvas) / image_size;
  at::Tensor mask = at::zeros({canvas, canvas}, at::kByte);
  mask.slice(0, std::lround(box.top * scale), std::lround(box.bottom * scale))
      .slice(1, std::lround(box.left * scale), std::lround(box.right * scale))
      .fill_(255);
  MaskedImage masked;
  masked.image = image;
  masked.mask = mask;
  masked.url = encode_mask_url(mask);
  return masked;
}

}  // namespace

void add_request_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string object, paste;
    std::vector<std::string> keys;
    std::string mode = "copy";
    int layer = -1, rank = 1;
    std::string solver = "direct";
    int64_t canvas = 256;
    std::string out;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "request", "write an edit request from rectangles, for scripts (the studio paints free-form masks)");
  add_model_options(command, options->model);
  command->add_option("--object", options->object, "thing to copy: IMAGE:TOP,LEFT,BOTTOM,RIGHT in image pixels");
  command->add_option("--paste", options->paste, "where it goes: IMAGE:TOP,LEFT,BOTTOM,RIGHT")->required();
  command->add_option("--key", options->keys, "context regions (repeatable); default: the paste region");
  command->add_option("--mode", options->mode, "copy or erase")->capture_default_str()->check(
      CLI::IsMember({"copy", "erase"}));
  command->add_option("-l,--layer", options->layer, "layer to rewrite; -1 uses the model's default")
      ->capture_default_str();
  command->add_option("--rank", options->rank, "rank of the update")->capture_default_str()->check(CLI::Range(1, 64));
  command->add_option("--solver", options->solver, "direct, adam or adam-lambda")->capture_default_str()->check(
      CLI::IsMember({"direct", "adam", "adam-lambda"}));
  command->add_option("--canvas", options->canvas, "side of the mask canvas in pixels, as the studio paints")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{8}, int64_t{4096}));
  command->add_option("-o,--out", options->out, "request JSON to write")->required();
  command->callback([options] {
    std::unique_ptr<Generator> generator = open_model(options->model);
    int64_t size = generator->image_size();
    Request request;
    request.mode = options->mode;
    request.model = options->model.model;
    request.sampling = sampling_from(options->model);
    if (options->layer >= 0) request.layer = generator->layer(options->layer).index;
    request.rank = options->rank;
    request.solver.solver = options->solver;
    if (!options->object.empty()) request.object = region_mask(options->object, "--object", size, options->canvas);
    if (request.mode == "copy" && !request.object) throw invalid_input("--object is required in copy mode");
    request.paste = region_mask(options->paste, "--paste", size, options->canvas);
    for (const std::string& key : options->keys) request.keys.push_back(region_mask(key, "--key", size, options->canvas));
    save_request(options->out, request);
    spdlog::info("wrote {}", options->out);
  });
}

}  // namespace rankone::cli

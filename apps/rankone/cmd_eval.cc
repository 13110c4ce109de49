// The eval subcommand: measures an edit on many samples and writes an HTML report.
#include "cli_common.h"

#include "rankone/error.h"
#include "rankone/models/discriminator.h"
#include "rankone/models/latents.h"
#include "rankone/rewriting/evaluation.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>

namespace rankone::cli {

namespace {

volatile std::sig_atomic_t interrupted = 0;

// The first Ctrl-C makes the evaluation stop after its current chunk. A second one ends the
// process at once, because the handler restores the default action.
void on_interrupt(int) {
  interrupted = 1;
  std::signal(SIGINT, SIG_DFL);
}

std::string percent(const nlohmann::json& fraction) {
  return fraction.is_null() ? "n/a" : fmt::format("{:.1f}%", 100 * fraction.get<double>());
}

std::string number(const nlohmann::json& value) {
  return value.is_null() ? "n/a" : fmt::format("{:.4f}", value.get<double>());
}

}  // namespace

void add_eval_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::vector<std::string> patches;
    std::string samples = "0-999";
    std::string out;
    std::string discriminator;
    double threshold = 1.0;
    int64_t chunk = 50;
    int grid = 8;
    bool restart = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "eval", "measure an edit on many samples: where the rule applies, the pixel change inside and outside that "
              "region, and a discriminator's realism score; writes report.html and report.json");
  add_model_options(command, options->model);
  command->add_option("-p,--patch", options->patches, "patch file(s), applied in order")->required();
  command->add_option("--samples,--seeds", options->samples, "sample indices, at most 100000")->capture_default_str();
  command->add_option("-o,--out", options->out, "report folder (created if missing)")->required();
  command->add_option("--discriminator", options->discriminator,
                      "DCGAN discriminator checkpoint for a realism score (e.g. the model's discriminator.pt)");
  command->add_option("--threshold", options->threshold,
                      "relative response from which the rule counts as applying: 1 is the mean response under the "
                      "request's own context masks")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            char* end = nullptr;
            double value = std::strtod(text.c_str(), &end);
            bool valid = end != text.c_str() && *end == '\0' && value > 0 && std::isfinite(value);
            return valid ? "" : "'" + text + "' is not a positive number (1 is the mean context response)";
          },
          "POSITIVE"));
  command->add_option("--chunk", options->chunk, "samples per chunk; partial results are saved after each")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  command->add_option("--grid", options->grid, "samples in each of the most and least changed grids")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  command->add_flag("--restart", options->restart, "discard saved partial results in the report folder");
  command->callback([options] {
    EvaluationSettings settings;
    settings.samples = parse_sample_indices(options->samples, 100000);
    settings.samples_text = options->samples;
    settings.sampling = sampling_from(options->model);
    settings.threshold = options->threshold;
    settings.chunk_size = options->chunk;
    settings.grid_samples = options->grid;
    settings.restart = options->restart;
    settings.validate();

    std::unique_ptr<Generator> generator = open_model(options->model);
    std::optional<Discriminator> discriminator;
    if (!options->discriminator.empty()) {
      discriminator = Discriminator::load(options->discriminator);
      spdlog::info("loaded discriminator {} for {} pixel images", options->discriminator,
                   discriminator->image_size());
    }

    ProgressCallback bar = progress_bar();
    interrupted = 0;
    auto previous = std::signal(SIGINT, on_interrupt);
    EvaluationResult result;
    try {
      result = evaluate_edit(*generator, options->patches, discriminator ? &*discriminator : nullptr, settings,
                             options->out, [&bar](const Progress& p) { return bar(p) && !interrupted; });
    } catch (...) {
      std::signal(SIGINT, previous);
      throw;
    }
    std::signal(SIGINT, previous);

    const nlohmann::json& report = result.report;
    if (result.resumed > 0) spdlog::info("resumed: {} samples were read from saved partial results", result.resumed);
    std::cout << fmt::format("rule applies in {} of {} samples ({}); change inside the region {}, outside {} "
                             "(mean |after - before| per pixel, range [-1, 1])\n",
                             report["rule_applies"]["count"].get<int64_t>(), report["samples"]["count"].get<int64_t>(),
                             percent(report["rule_applies"]["fraction"]), number(report["pixel_change"]["inside"]),
                             number(report["pixel_change"]["outside"]));
    if (!report["discriminator"].is_null()) {
      std::cout << fmt::format("discriminator logit: mean {} before, {} after\n",
                               number(report["discriminator"]["mean_logit_before"]),
                               number(report["discriminator"]["mean_logit_after"]));
    }
    std::cout << "wrote " << (std::filesystem::path(options->out) / "report.html").string() << "\n";
  });
}

}  // namespace rankone::cli

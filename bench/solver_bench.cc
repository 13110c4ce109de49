// Solver and statistics speed: the reference Adam optimiser against the direct solver
// on the same requests, plus statistics throughput, in one run on one machine.
//
//   build/bench/solver_bench [--threads N] [--skip-adam-256] [--statistics-samples N]
//
// Cases: (a) the bundled face model (dcgan-celeba32, fetched) at layers 2 and 3 with the
// bundled sunglasses request; (b) the tiny StyleGAN2 fixture's layer-6 request in the
// reference sampling mode; (c) a 256x256 config-f StyleGAN2 with random weights at layers 6
// and 8 with a synthetic request. For each: seconds and final goal loss of both solvers.
// Then second-moment throughput at layer 6 of the 256x256 model (1000 samples by default):
// one matrix product per batch against one outer product per key pixel.
#include "rankone/formats/tensor_file.h"
#include "rankone/models/generator.h"
#include "rankone/models/model_store.h"
#include "rankone/models/stylegan2.h"
#include "rankone/rewriting/masks.h"
#include "rankone/rewriting/rewriter.h"
#include "rankone/rewriting/statistics.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>

namespace {

using rankone::EditResult;
using rankone::Generator;
using rankone::Request;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Row {
  std::string name;
  double adam_seconds = -1, adam_loss = -1, direct_seconds = -1, direct_loss = -1, initial_loss = -1;
  double end_to_end = -1;  // direct: goal, directions and solve, statistics cached
};

// Solves `request` with both solvers on cached statistics. Times are the fastest of 3 direct
// runs and of `adam_repeats` Adam runs (0 skips Adam).
Row compare_solvers(const std::string& name, const Generator& g, Request request, int adam_repeats) {
  int layer = rankone::request_layer(g, request);
  std::printf("  %s: statistics (%lld samples)...\n", name.c_str(), static_cast<long long>(request.statistics.samples));
  std::fflush(stdout);
  rankone::SecondMoment moment = rankone::compute_second_moment(g, layer, request.sampling, request.statistics);
  Row row;
  row.name = name;
  request.solver.solver = "direct";
  for (int run = 0; run < 3; ++run) {
    double start = now();
    EditResult direct = rankone::rewrite(g, request, moment);
    double end_to_end = now() - start;
    if (run == 0 || direct.seconds < row.direct_seconds) row.direct_seconds = direct.seconds;
    if (run == 0 || end_to_end < row.end_to_end) row.end_to_end = end_to_end;
    row.direct_loss = direct.goal_loss_final;
    row.initial_loss = direct.goal_loss_initial;
  }
  request.solver.solver = "adam";
  request.solver.steps = 2001;
  for (int run = 0; run < adam_repeats; ++run) {
    std::printf("  %s: adam run %d of %d...\n", name.c_str(), run + 1, adam_repeats);
    std::fflush(stdout);
    EditResult adam = rankone::rewrite(g, request, moment);
    if (run == 0 || adam.seconds < row.adam_seconds) row.adam_seconds = adam.seconds;
    row.adam_loss = adam.goal_loss_final;
  }
  return row;
}

rankone::MaskedImage rectangle(int64_t image, int64_t canvas, int64_t top, int64_t left, int64_t bottom,
                               int64_t right) {
  rankone::MaskedImage masked;
  masked.image = image;
  masked.mask = at::zeros({canvas, canvas}, at::kByte);
  masked.mask.slice(0, top, bottom).slice(1, left, right).fill_(255);
  masked.url = rankone::encode_mask_url(masked.mask);
  return masked;
}

// A copy / paste request on a 256-pixel canvas: a square from image 1 pasted onto image 2,
// with three context regions.
Request synthetic_request(int layer) {
  Request request;
  request.layer = layer;
  request.object = rectangle(1, 256, 64, 96, 128, 160);
  request.paste = rectangle(2, 256, 32, 128, 96, 192);
  request.keys = {rectangle(2, 256, 32, 128, 96, 192), rectangle(3, 256, 40, 80, 104, 144),
                  rectangle(4, 256, 100, 30, 150, 90)};
  request.statistics = {200, 10};
  return request;
}

// Prints samples per second of the second moment at `layer` over `samples` samples in batches
// of 10. rankone's pass (compute_second_moment) runs against the same network pass followed by
// one outer product per key pixel, and the network and the accumulation are also timed apart.
void statistics_throughput(const Generator& g, int layer, int64_t samples) {
  torch::NoGradGuard no_grad;
  rankone::SamplingSettings sampling;
  const int64_t batch = 10;
  const rankone::LayerInfo& info = g.layer(layer);
  std::printf("\nstatistics at layer %d (%lld keys of %lld channels per sample), %lld samples, batch %lld...\n", layer,
              static_cast<long long>(info.key_size * info.key_size), static_cast<long long>(info.key_channels),
              static_cast<long long>(samples), static_cast<long long>(batch));
  std::fflush(stdout);

  double start = now();
  rankone::compute_second_moment(g, layer, sampling, {samples, batch});
  double batched_seconds = now() - start;

  // The same keys, accumulated both ways, with each part timed.
  double network_seconds = 0, outer_seconds = 0, product_seconds = 0;
  at::Tensor outer_sum = at::zeros({info.key_channels, info.key_channels}, at::kDouble);
  at::Tensor product_sum = at::zeros_like(outer_sum);
  for (int64_t first = 0; first < samples; first += batch) {
    std::vector<int64_t> indices(std::min(batch, samples - first));
    std::iota(indices.begin(), indices.end(), first);
    start = now();
    at::Tensor key = g.run_context_key(layer, g.latents(indices, sampling), sampling);
    network_seconds += now() - start;

    start = now();
    at::Tensor rows = key.permute({0, 2, 3, 1}).reshape({-1, info.key_channels}).to(at::kDouble);
    for (int64_t p = 0; p < rows.size(0); ++p) outer_sum.addr_(rows[p], rows[p]);
    outer_seconds += now() - start;

    start = now();
    at::Tensor columns = key.transpose(0, 1).reshape({info.key_channels, -1}).to(at::kDouble);
    product_sum.addmm_(columns, columns.t());
    product_seconds += now() - start;
  }
  double mismatch = ((outer_sum - product_sum).abs().max() / product_sum.abs().max()).item<double>();

  auto rate = [&](double seconds) { return samples / seconds; };
  std::printf("  %-48s %10.1f samples/s\n", "rankone (network, one product per batch)", rate(batched_seconds));
  std::printf("  %-48s %10.1f samples/s\n", "network, then one outer product per key pixel",
              rate(network_seconds + outer_seconds));
  std::printf("  %-48s %10.1f samples/s\n", "network up to the layer alone", rate(network_seconds));
  std::printf("  %-48s %10.1f samples/s\n", "accumulation alone: one product per batch", rate(product_seconds));
  std::printf("  %-48s %10.1f samples/s\n", "accumulation alone: one outer product per pixel", rate(outer_seconds));
  std::printf("  ratio rankone / per pixel, whole pass: %.2fx; accumulation alone: %.1fx (sums agree to %.1e)\n",
              (network_seconds + outer_seconds) / batched_seconds, outer_seconds / product_seconds, mismatch);

  // A pass that does not stop at the layer: the whole generator per batch (as a forward hook on
  // the layer would see it), then the same per-pixel accumulation. The generator's rate is
  // measured on the first `full_samples` samples only, because it is about 100x slower.
  double full_seconds = 0;
  const int64_t full_samples = std::min<int64_t>(samples, 20);
  for (int64_t first = 0; first < full_samples; first += batch) {
    std::vector<int64_t> indices(std::min(batch, full_samples - first));
    std::iota(indices.begin(), indices.end(), first);
    start = now();
    g.generate(g.latents(indices, sampling), sampling);
    full_seconds += now() - start;
  }
  double full_rate = 1.0 / (full_seconds / full_samples + outer_seconds / samples);
  std::printf("  %-48s %10.2f samples/s (generator timed on %lld samples)\n",
              "whole generator, then one outer product per pixel", full_rate, static_cast<long long>(full_samples));
  std::printf("  ratio rankone / whole generator with per-pixel products: %.0fx\n", rate(batched_seconds) / full_rate);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  bool skip_adam_256 = false;
  int64_t statistics_samples = 1000;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--threads" && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else if (flag == "--skip-adam-256") {
      skip_adam_256 = true;
    } else if (flag == "--statistics-samples" && i + 1 < argc) {
      statistics_samples = std::max(10, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: solver_bench [--threads N] [--skip-adam-256] [--statistics-samples N]\n");
      return 2;
    }
  }
  at::set_num_threads(threads);
  std::printf("threads %d\n", at::get_num_threads());
  std::vector<Row> rows;

  try {
    if (std::filesystem::exists(rankone::models_dir() + "/dcgan-celeba32/generator.pt")) {
      auto g = rankone::load_generator("dcgan-celeba32");
      Request request = rankone::load_request(rankone::source_dir() + "/requests/dcgan-sunglasses.json");
      for (int layer : {2, 3}) {
        request.layer = layer;
        rows.push_back(compare_solvers("dcgan-celeba32 layer " + std::to_string(layer), *g, request, 3));
      }
    } else {
      std::printf("dcgan-celeba32 not fetched: skipping case (a)\n");
    }

    std::string fixtures = rankone::source_dir() + "/../shared/fixtures/stylegan2-tiny";
    if (std::filesystem::exists(fixtures)) {
      auto g = rankone::load_generator(fixtures + "/generator.safetensors");
      Request request = rankone::load_request(fixtures + "/request_layer6.json");
      request.layer = 6;
      request.sampling.latents = "reference";
      request.sampling.noise = "reference";
      request.statistics = {200, 10};
      rows.push_back(compare_solvers("stylegan2-tiny layer 6 (fixture)", *g, request, 3));
    } else {
      std::printf("fixtures not found: skipping case (b)\n");
    }

    rankone::StyleGAN2Config config;
    config.resolution = 256;
    config.style_size = 512;
    config.mapping_layers = 8;
    config.channels = rankone::config_f_channels(256);
    rankone::StyleGAN2 g(rankone::make_random_stylegan2(config, 1));
    for (int layer : {6, 8}) {
      rows.push_back(compare_solvers("stylegan2-256 random, layer " + std::to_string(layer), g,
                                     synthetic_request(layer), skip_adam_256 ? 0 : 1));
    }

    std::printf("\n%-36s %9s | %9s %9s | %9s %9s %9s | %8s\n", "case", "initial", "adam s", "adam loss", "direct s",
                "direct loss", "end-to-end", "speed-up");
    for (const Row& row : rows) {
      std::printf("%-36s %9.5f | ", row.name.c_str(), row.initial_loss);
      if (row.adam_seconds >= 0) {
        std::printf("%9.2f %9.5f | ", row.adam_seconds, row.adam_loss);
      } else {
        std::printf("%9s %9s | ", "skipped", "");
      }
      std::printf("%9.3f %11.5f %9.3f | ", row.direct_seconds, row.direct_loss, row.end_to_end);
      if (row.adam_seconds >= 0) {
        std::printf("%7.0fx\n", row.adam_seconds / row.direct_seconds);
      } else {
        std::printf("%8s\n", "");
      }
    }
    statistics_throughput(g, 6, statistics_samples);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

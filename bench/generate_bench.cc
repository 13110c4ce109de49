// Generation speed of a full-size StyleGAN2 (256x256, config f, random weights) on the
// CPU, against the same convolutions timed alone.
//
//   build/bench/generate_bench [--threads N] [--repeats N] [--resolution S]
//
// Prints images/s at batch 1 and 8 and the attained GFLOP/s of the 3x3 convolutions
// inside generate(), beside the GFLOP/s of those convolutions run alone on pre-made inputs
// through stylegan2::convolve, the path generate() takes (the conv-only peak).
#include "models/stylegan2_parts.h"

#include "rankone/error.h"
#include "rankone/models/stylegan2.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int repeats = 3;
  int64_t resolution = 256;
  std::vector<int64_t> batch_sizes = {1, 8};
};

void print_usage() {
  std::printf(
      "usage: generate_bench [options]\n"
      "  --threads N      intra-op threads (default: all cores, %u here)\n"
      "  --repeats N      timed runs per measurement; the fastest is reported (default 3)\n"
      "  --resolution S   image side of the config-f network, 8 to 1024 (default 256)\n",
      std::thread::hardware_concurrency());
}

int parse_positive(const std::string& flag, const char* text) {
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < 1 || value > 1 << 20) {
    throw rankone::invalid_input(flag + " must be a positive integer, got '" + text + "'");
  }
  return static_cast<int>(value);
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      print_usage();
      std::exit(0);
    }
    if (i + 1 >= argc) throw rankone::invalid_input("missing value after " + flag + " (see --help)");
    if (flag == "--threads") {
      options.threads = parse_positive(flag, argv[++i]);
    } else if (flag == "--repeats") {
      options.repeats = parse_positive(flag, argv[++i]);
    } else if (flag == "--resolution") {
      options.resolution = parse_positive(flag, argv[++i]);
    } else {
      throw rankone::invalid_input("unknown option '" + flag + "' (see --help)");
    }
  }
  return options;
}

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// Seconds of the fastest of `repeats` runs of `first` and of `second`, after one warm-up
// run of each. The runs alternate, so a change in machine load affects both alike.
std::pair<double, double> fastest_seconds(int repeats, const std::function<void()>& first,
                                          const std::function<void()>& second) {
  auto seconds = [](const std::function<void()>& run) {
    auto start = std::chrono::steady_clock::now();
    run();
    std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    return elapsed.count();
  };
  first();
  second();
  std::pair<double, double> best = {1e30, 1e30};
  for (int i = 0; i < repeats; ++i) {
    best.first = std::min(best.first, seconds(first));
    best.second = std::min(best.second, seconds(second));
  }
  return best;
}

// One 3x3 convolution of the network, with its input made in advance.
struct ConvCase {
  torch::Tensor input;   // [B, C_in, R_key, R_key]
  torch::Tensor weight;  // in the layout the convolution takes
  bool transposed = false;
  double flops = 0.0;    // 2 * C_in * C_out * 9 * key pixels * B
};

std::vector<ConvCase> make_conv_cases(const rankone::Generator& generator, int64_t batch) {
  std::vector<ConvCase> cases;
  for (const rankone::LayerInfo& info : generator.layers()) {
    ConvCase c;
    c.transposed = info.stride() == 2;
    c.input = at::randn({batch, info.key_channels, info.key_size, info.key_size});
    c.weight = rankone::stylegan2::prepare_conv_weight(generator.weight(info.index), c.transposed);
    c.flops = 2.0 * info.key_channels * info.value_channels * 9 * info.key_size * info.key_size * batch;
    cases.push_back(c);
  }
  return cases;
}

void run_convs(const std::vector<ConvCase>& cases) {
  for (const ConvCase& c : cases) {
    torch::Tensor out = rankone::stylegan2::convolve(c.input, c.weight, c.transposed);
  }
}

int run(int argc, char** argv) {
  Options options = parse_options(argc, argv);
  at::set_num_threads(options.threads);
  at::NoGradGuard no_grad;

  rankone::StyleGAN2Config config;
  config.resolution = options.resolution;
  config.style_size = 512;
  config.mapping_layers = 8;
  config.channels = rankone::config_f_channels(options.resolution);
  std::unique_ptr<rankone::Generator> generator = rankone::load_stylegan2(rankone::make_random_stylegan2(config, 0));

  std::printf("StyleGAN2 %lldx%lld config f, random weights, %.1fM parameters\n",
              static_cast<long long>(options.resolution), static_cast<long long>(options.resolution),
              generator->parameter_count() / 1e6);
  std::printf("threads %d (hardware %u), CPU %s\n", at::get_num_threads(),
              std::thread::hardware_concurrency(), cpu_model().c_str());
  std::printf("%6s %12s %10s %16s %16s %8s\n", "batch", "s/batch", "images/s", "generate GFLOP/s", "conv-only GFLOP/s",
              "ratio");

  rankone::SamplingSettings settings;
  for (int64_t batch_size : options.batch_sizes) {
    std::vector<int64_t> indices(batch_size);
    for (int64_t i = 0; i < batch_size; ++i) indices[i] = i;
    rankone::SampleBatch batch = generator->latents(indices, settings);

    std::vector<ConvCase> cases = make_conv_cases(*generator, batch_size);
    double flops = 0.0;
    for (const ConvCase& c : cases) flops += c.flops;

    auto [generate_s, conv_s] = fastest_seconds(
        options.repeats, [&] { generator->generate(batch, settings); }, [&] { run_convs(cases); });
    std::printf("%6lld %12.3f %10.2f %16.1f %16.1f %8.2f\n", static_cast<long long>(batch_size), generate_s,
                batch_size / generate_s, flops / generate_s / 1e9, flops / conv_s / 1e9, generate_s / conv_s);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// Reading a StyleGAN2 generator from rosinality-layout tensors, and building one with
// random weights for tests and benchmarks.
#include "models/stylegan2_parts.h"

#include "rankone/error.h"
#include "rankone/models/numpy_random.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

namespace rankone {

namespace {

constexpr char kReleasedPrefix[] = "g_ema.";
constexpr double kMappingLrMultiplier = 0.01;  // rosinality's default lr_mlp
constexpr int64_t kLatentAvgSamples = 4096;

std::string shape_text(at::IntArrayRef shape) {
  std::ostringstream out;
  out << shape;
  return out.str();
}

// The prefix of the generator's tensors in `file`, or "none" when it contains no StyleGAN2.
std::string find_prefix(const TensorFile& file) {
  for (std::string prefix : {std::string(kReleasedPrefix), std::string()}) {
    if (file.contains(prefix + "conv1.conv.weight") && file.contains(prefix + "input.input")) return prefix;
  }
  return "none";
}

// One tensor the network expects, by its name without the prefix.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool required = true;
  bool is_parameter = true;  // false for buffers (noise maps, FIR kernels) and latent_avg
};

// The tensor list of a network whose shape has been read from the file.
struct Plan {
  int64_t style_size = 0;
  int64_t mapping_layers = 0;
  int64_t conv_count = 0;                // len(convs): 2 per resolution above 4x4
  std::map<int64_t, int64_t> channels;  // resolution -> channels
  bool noise_buffers = false;
  std::vector<ExpectedTensor> tensors;
};

// Reads the hyper-parameters from the tensors that define them and lists every tensor
// the network then needs, in rosinality's state-dict order.
class PlanBuilder {
 public:
  PlanBuilder(const TensorFile& file, std::string prefix) : file_(file), prefix_(std::move(prefix)) {}

  Plan build() {
    Plan plan;
    read_sizes(plan);
    list_tensors(plan);
    return plan;
  }

 private:
  bool has(const std::string& name) const { return file_.contains(prefix_ + name); }

  const torch::Tensor& shaped(const std::string& name, int64_t dims) const {
    const torch::Tensor& tensor = file_.get(prefix_ + name);
    if (tensor.dim() != dims) {
      throw invalid_input(file_.path + ": tensor '" + prefix_ + name + "' has shape " + shape_text(tensor.sizes()) +
                          ", expected " + std::to_string(dims) + " dimensions (is this a rosinality StyleGAN2 checkpoint?)");
    }
    return tensor;
  }

  void read_sizes(Plan& plan) const {
    while (has("style." + std::to_string(plan.mapping_layers + 1) + ".weight")) ++plan.mapping_layers;
    if (plan.mapping_layers == 0) {
      throw invalid_input(file_.path + ": tensor '" + prefix_ + "style.1.weight' (the first mapping layer) not found");
    }
    plan.style_size = shaped("style.1.weight", 2).size(1);

    while (has("convs." + std::to_string(plan.conv_count) + ".conv.weight")) ++plan.conv_count;
    if (plan.conv_count % 2 != 0) {
      throw invalid_input(file_.path + ": tensor '" + prefix_ + "convs." + std::to_string(plan.conv_count) +
                          ".conv.weight' not found (convolutions come in pairs, one per resolution)");
    }
    if (plan.conv_count > 16) {
      throw invalid_input(file_.path + ": " + std::to_string(plan.conv_count) +
                          " styled convolutions means a resolution above 1024x1024, which is not supported");
    }

    plan.channels[4] = shaped("conv1.conv.weight", 5).size(1);
    for (int64_t pair = 0; pair < plan.conv_count / 2; ++pair) {
      int64_t resolution = int64_t{8} << pair;
      plan.channels[resolution] = shaped("convs." + std::to_string(2 * pair) + ".conv.weight", 5).size(1);
    }

    // Noise buffers are optional as a group: all present or all absent.
    plan.noise_buffers = has("noises.noise_0");
  }

  void list_tensors(Plan& plan) const {
    int64_t style = plan.style_size;
    auto add = [&](const std::string& name, std::vector<int64_t> shape) {
      plan.tensors.push_back({name, std::move(shape), true, true});
    };
    auto add_buffer = [&](const std::string& name, std::vector<int64_t> shape, bool required) {
      plan.tensors.push_back({name, std::move(shape), required, false});
    };
    auto add_styled_conv = [&](const std::string& name, int64_t in, int64_t out, bool upsample) {
      add(name + ".conv.modulation.weight", {in, style});
      add(name + ".conv.modulation.bias", {in});
      add(name + ".conv.weight", {1, out, in, 3, 3});
      if (upsample) add_buffer(name + ".conv.blur.kernel", {4, 4}, false);
      add(name + ".noise.weight", {1});
      add(name + ".activate.bias", {out});
    };
    auto add_to_rgb = [&](const std::string& name, int64_t in) {
      add(name + ".bias", {1, 3, 1, 1});
      add(name + ".conv.weight", {1, 3, in, 1, 1});
      add(name + ".conv.modulation.weight", {in, style});
      add(name + ".conv.modulation.bias", {in});
    };

    for (int64_t k = 1; k <= plan.mapping_layers; ++k) {
      add("style." + std::to_string(k) + ".weight", {style, style});
      add("style." + std::to_string(k) + ".bias", {style});
    }
    for (int64_t k = 0; k <= plan.conv_count; ++k) {
      int64_t size = int64_t{4} << ((k + 1) / 2);
      add_buffer("noises.noise_" + std::to_string(k), {1, 1, size, size}, plan.noise_buffers);
    }
    add("input.input", {1, plan.channels[4], 4, 4});
    add_styled_conv("conv1", plan.channels[4], plan.channels[4], false);
    add_to_rgb("to_rgb1", plan.channels[4]);
    for (int64_t pair = 0; pair < plan.conv_count / 2; ++pair) {
      int64_t resolution = int64_t{8} << pair;
      int64_t in = plan.channels[resolution / 2], out = plan.channels[resolution];
      std::string index = std::to_string(pair);
      add_buffer("to_rgbs." + index + ".upsample.kernel", {4, 4}, false);
      add_styled_conv("convs." + std::to_string(2 * pair), in, out, true);
      add_styled_conv("convs." + std::to_string(2 * pair + 1), out, out, false);
      add_to_rgb("to_rgbs." + index, out);
    }
  }

  const TensorFile& file_;
  std::string prefix_;
};

// Checks the file against the plan: every required tensor present, every shape right,
// no tensor the network does not use. Throws an Error naming the tensors at fault.
void check_against_plan(const TensorFile& file, const std::string& prefix, const Plan& plan) {
  std::vector<std::string> missing;
  std::set<std::string> expected_names;
  for (const ExpectedTensor& expected : plan.tensors) {
    std::string full = prefix + expected.name;
    expected_names.insert(full);
    if (!file.contains(full)) {
      if (expected.required) missing.push_back(full);
      continue;
    }
    const torch::Tensor& tensor = file.get(full);
    if (tensor.sizes() != at::IntArrayRef(expected.shape)) {
      throw invalid_input(file.path + ": tensor '" + full + "' has shape " + shape_text(tensor.sizes()) +
                          ", expected " + shape_text(expected.shape) + " for this StyleGAN2 (style size " +
                          std::to_string(plan.style_size) + ")");
    }
    if (!tensor.is_floating_point()) {
      throw invalid_input(file.path + ": tensor '" + full + "' has dtype " + std::string(tensor.dtype().name()) +
                          ", expected a floating-point type");
    }
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", '" : "'") + missing[i] + "'";
    if (missing.size() > 8) list += " and " + std::to_string(missing.size() - 8) + " more";
    throw invalid_input(file.path + ": the StyleGAN2 checkpoint is incomplete, missing tensor" +
                        (missing.size() > 1 ? "s " : " ") + list);
  }

  // latent_avg sits beside g_ema in the released layout.
  expected_names.insert("latent_avg");
  std::vector<std::string> unknown;
  for (const std::string& name : file.names) {
    if (!prefix.empty() && name.rfind(prefix, 0) != 0) continue;  // rest of a training checkpoint
    if (!expected_names.count(name)) unknown.push_back(name);
  }
  if (!unknown.empty()) {
    std::string list;
    for (size_t i = 0; i < unknown.size() && i < 8; ++i) list += (i ? ", '" : "'") + unknown[i] + "'";
    if (unknown.size() > 8) list += " and " + std::to_string(unknown.size() - 8) + " more";
    throw invalid_input(file.path + ": unknown tensor" + std::string(unknown.size() > 1 ? "s " : " ") + list +
                        " in a StyleGAN2 checkpoint with " + std::to_string(plan.conv_count + 1) +
                        " styled convolutions (rosinality/stylegan2-pytorch layout expected)");
  }
}

void check_fir_kernel(const TensorFile& file, const std::string& name) {
  if (!file.contains(name)) return;
  static const float taps[4] = {1.f, 3.f, 3.f, 1.f};
  torch::Tensor standard = at::empty({4, 4}, at::kFloat);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) standard[y][x] = taps[y] * taps[x] / 16.f;
  }
  if (!at::allclose(file.get(name).to(at::kFloat), standard, 1e-5, 1e-6)) {
    throw invalid_input(file.path + ": tensor '" + name +
                        "' is not the [1,3,3,1] FIR kernel (outer product / 16), the only blur kernel supported");
  }
}

}  // namespace

bool is_stylegan2(const TensorFile& file) { return find_prefix(file) != "none"; }

std::unique_ptr<Generator> load_stylegan2(const TensorFile& file) { return std::make_unique<StyleGAN2>(file); }

void StyleGAN2::load(const TensorFile& file) {
  at::NoGradGuard no_grad;
  source_ = file.path;
  std::string prefix = find_prefix(file);
  if (prefix == "none") {
    throw invalid_input(file.path + ": not a StyleGAN2 checkpoint: tensors 'g_ema.conv1.conv.weight' and "
                        "'g_ema.input.input' (or the same names without 'g_ema.') not found");
  }
  Plan plan = PlanBuilder(file, prefix).build();
  check_against_plan(file, prefix, plan);

  auto get = [&](const std::string& name) { return file.get(prefix + name).to(at::kFloat).contiguous(); };
  auto equal_linear = [&](const std::string& name, double lr_multiplier) {
    torch::Tensor weight = get(name + ".weight");
    EqualLinear linear;
    linear.weight_t = (weight * (lr_multiplier / std::sqrt(static_cast<double>(weight.size(1))))).t().contiguous();
    linear.bias = get(name + ".bias") * lr_multiplier;
    return linear;
  };

  style_size_ = plan.style_size;
  resolution_ = int64_t{4} << (plan.conv_count / 2);
  has_stored_noise_ = plan.noise_buffers;
  for (int64_t k = 1; k <= plan.mapping_layers; ++k) {
    mapping_.push_back(equal_linear("style." + std::to_string(k), kMappingLrMultiplier));
  }
  constant_input_ = get("input.input");

  // Styled convolutions: layer 2 is conv1, layer N >= 3 is convs.(N-3).
  for (int64_t slot = 0; slot <= plan.conv_count; ++slot) {
    auto conv = std::make_unique<StyledConv>();
    conv->layer = static_cast<int>(slot + 2);
    conv->name = slot == 0 ? "conv1" : "convs." + std::to_string(slot - 1);
    conv->upsample = slot > 0 && (slot - 1) % 2 == 0;
    conv->modulation = equal_linear(conv->name + ".conv.modulation", 1.0);
    conv->weight = get(conv->name + ".conv.weight")[0].contiguous();
    conv->out_channels = conv->weight.size(0);
    conv->in_channels = conv->weight.size(1);
    conv->value_size = int64_t{4} << ((slot + 1) / 2);
    conv->key_size = conv->upsample ? conv->value_size / 2 : conv->value_size;
    conv->conv_weight = stylegan2::prepare_conv_weight(conv->weight, conv->upsample);
    conv->demod_weight = stylegan2::prepare_demod_weight(conv->weight);
    conv->noise_strength = get(conv->name + ".noise.weight").item<double>();
    conv->activation_bias = get(conv->name + ".activate.bias");
    if (has_stored_noise_) conv->stored_noise = get("noises.noise_" + std::to_string(slot));
    if (conv->upsample) check_fir_kernel(file, prefix + conv->name + ".conv.blur.kernel");
    convs_.push_back(std::move(conv));
  }

  for (int64_t slot = 0; slot <= plan.conv_count / 2; ++slot) {
    auto to_rgb = std::make_unique<ToRGB>();
    to_rgb->after_layer = static_cast<int>(2 + 2 * slot);
    to_rgb->name = slot == 0 ? "to_rgb1" : "to_rgbs." + std::to_string(slot - 1);
    to_rgb->modulation = equal_linear(to_rgb->name + ".conv.modulation", 1.0);
    torch::Tensor weight = get(to_rgb->name + ".conv.weight").view({3, -1});
    to_rgb->weight = weight / std::sqrt(static_cast<double>(weight.size(1)));
    to_rgb->bias = get(to_rgb->name + ".bias").view({3});
    if (slot > 0) check_fir_kernel(file, prefix + to_rgb->name + ".upsample.kernel");
    to_rgbs_.push_back(std::move(to_rgb));
  }

  // latent_avg: from the file, else the mean mapping output of fixed latents.
  const std::string avg_name = "latent_avg";
  if (file.contains(avg_name)) {
    const torch::Tensor& avg = file.get(avg_name);
    if (avg.dim() != 1 || avg.size(0) != style_size_ || !avg.is_floating_point()) {
      throw invalid_input(file.path + ": tensor 'latent_avg' has shape " + shape_text(avg.sizes()) + ", expected [" +
                          std::to_string(style_size_) + "] (floating point)");
    }
    latent_avg_ = avg.to(at::kFloat).contiguous();
    latent_avg_origin_ = "from the checkpoint";
  } else {
    NumpyRandomState rng(0);
    std::vector<float> values = rng.standard_normal_f32(kLatentAvgSamples * style_size_);
    torch::Tensor z = at::from_blob(values.data(), {kLatentAvgSamples, style_size_}, at::kFloat);
    latent_avg_ = map_latents(z).mean(0);
    latent_avg_origin_ = "not in the checkpoint; the mean mapping output of " + std::to_string(kLatentAvgSamples) +
                         " latents RandomState(0).standard_normal((" + std::to_string(kLatentAvgSamples) + ", " +
                         std::to_string(style_size_) + "))";
  }

  for (const auto& conv : convs_) {
    LayerInfo info;
    info.index = conv->layer;
    info.name = "layer" + std::to_string(conv->layer);
    info.weight_name = prefix + conv->name + ".conv.weight";
    info.key_channels = conv->in_channels;
    info.key_size = conv->key_size;
    info.value_channels = conv->out_channels;
    info.value_size = conv->value_size;
    info.kernel_size = 3;
    info.demodulated = true;
    layer_infos_.push_back(info);
  }

  // Parameter count and fingerprint over the tensors as loaded.
  std::vector<std::string> manifest_lines;
  for (const ExpectedTensor& expected : plan.tensors) {
    if (!file.contains(prefix + expected.name)) continue;
    torch::Tensor tensor = get(expected.name);
    if (expected.is_parameter) parameter_count_ += tensor.numel();
    manifest_lines.push_back(expected.name + " " + shape_text(tensor.sizes()) + " " + sha256_hex(tensor));
  }
  if (file.contains(avg_name)) {
    manifest_lines.push_back("latent_avg " + shape_text(latent_avg_.sizes()) + " " + sha256_hex(latent_avg_));
  }
  std::sort(manifest_lines.begin(), manifest_lines.end());
  std::string manifest;
  for (const std::string& line : manifest_lines) manifest += line + "\n";
  fingerprint_ = sha256_hex(manifest.data(), manifest.size());
}

std::map<int64_t, int64_t> config_f_channels(int64_t resolution) {
  const std::map<int64_t, int64_t> table = {{4, 512},   {8, 512},   {16, 512}, {32, 512}, {64, 512},
                                            {128, 256}, {256, 128}, {512, 64}, {1024, 32}};
  std::map<int64_t, int64_t> channels;
  for (const auto& [size, count] : table) {
    if (size <= resolution) channels[size] = count;
  }
  return channels;
}

TensorFile make_random_stylegan2(const StyleGAN2Config& config, uint64_t seed) {
  bool power_of_two = config.resolution >= 8 && (config.resolution & (config.resolution - 1)) == 0;
  if (!power_of_two || config.resolution > 1024) {
    throw invalid_input("StyleGAN2 resolution must be a power of two from 8 to 1024, got " +
                        std::to_string(config.resolution));
  }
  if (config.style_size < 1 || config.mapping_layers < 1) {
    throw invalid_input("StyleGAN2 style size and mapping layers must be positive");
  }
  for (int64_t size = 4; size <= config.resolution; size *= 2) {
    if (!config.channels.count(size) || config.channels.at(size) < 1) {
      throw invalid_input("StyleGAN2 config: no channel count for resolution " + std::to_string(size));
    }
  }

  // List the tensors by building a plan from a skeleton file with the defining shapes.
  TensorFile skeleton;
  skeleton.path = "random StyleGAN2";
  auto put = [&](const std::string& name, std::vector<int64_t> shape) {
    skeleton.names.push_back(name);
    skeleton.tensors[name] = at::empty(shape, at::kFloat);
  };
  for (int64_t k = 1; k <= config.mapping_layers; ++k) put("style." + std::to_string(k) + ".weight", {config.style_size, config.style_size});
  put("conv1.conv.weight", {1, config.channels.at(4), config.channels.at(4), 3, 3});
  put("input.input", {1, config.channels.at(4), 4, 4});
  int64_t conv_count = 0;
  for (int64_t size = 8; size <= config.resolution; size *= 2) {
    for (int k = 0; k < 2; ++k) {
      put("convs." + std::to_string(conv_count++) + ".conv.weight",
          {1, config.channels.at(size), config.channels.at(k == 0 ? size / 2 : size), 3, 3});
    }
  }
  if (config.noise_buffers) put("noises.noise_0", {1, 1, 4, 4});
  Plan plan = PlanBuilder(skeleton, "").build();

  at::NoGradGuard no_grad;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  auto normal = [&](at::IntArrayRef shape) { return at::randn(shape, generator, at::kFloat); };
  std::string prefix = config.released_layout ? kReleasedPrefix : "";

  TensorFile file;
  file.path = "random StyleGAN2 " + std::to_string(config.resolution) + "x" + std::to_string(config.resolution) +
              " (seed " + std::to_string(seed) + ")";
  file.format = TensorFileFormat::kSafetensors;
  for (const ExpectedTensor& expected : plan.tensors) {
    if (!expected.required && expected.name.find("noises.") == 0) continue;
    const std::string& name = expected.name;
    auto ends_with = [&](const std::string& tail) {
      return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
    };
    torch::Tensor tensor;
    if (ends_with(".kernel")) {
      tensor = at::empty({4, 4}, at::kFloat);
      const float taps[4] = {1.f, 3.f, 3.f, 1.f};
      for (int y = 0; y < 4; ++y) {
        for (int x = 0; x < 4; ++x) tensor[y][x] = taps[y] * taps[x] / 16.f;
      }
    } else if (ends_with("modulation.bias")) {
      tensor = 1.0 + 0.1 * normal(expected.shape);  // rosinality initialises these at 1
    } else if (ends_with(".bias") || ends_with("noise.weight")) {
      tensor = 0.1 * normal(expected.shape);
    } else {
      tensor = normal(expected.shape);
    }
    file.names.push_back(prefix + name);
    file.tensors[prefix + name] = tensor;
  }
  if (config.released_layout) {
    file.names.push_back("latent_avg");
    file.tensors["latent_avg"] = 0.1 * normal({config.style_size});
  }
  file.metadata["description"] = "StyleGAN2 with random weights (make_random_stylegan2)";
  return file;
}

}  // namespace rankone

#include "rankone/models/stylegan2.h"

#include "models/scratch_pool.h"
#include "models/stylegan2_noise.h"
#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/numpy_random.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace rankone {
namespace {

namespace fs = std::filesystem;

// A float32 port differs from the reference by rounding only: a float64 run of the whole
// forward pass moves the image by 6e-6, so 1e-4 leaves a wide margin.
constexpr double kForwardTolerance = 1e-4;

// Loads a fixture file once per process.
const TensorFile& fixture(const std::string& path) {
  static std::map<std::string, std::unique_ptr<TensorFile>> cache;
  auto& slot = cache[path];
  if (!slot) slot = std::make_unique<TensorFile>(load_tensor_file(path));
  return *slot;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

std::unique_ptr<StyleGAN2> load_tiny(const std::string& dir, const std::string& name = "generator.safetensors") {
  std::unique_ptr<Generator> generator = load_stylegan2(fixture(dir + "/" + name));
  return std::unique_ptr<StyleGAN2>(dynamic_cast<StyleGAN2*>(generator.release()));
}

// The fixture's recorded noise as noise maps by layer number.
StyleGAN2::NoiseMaps recorded_noise(const TensorFile& forward) {
  StyleGAN2::NoiseMaps noise;
  for (int layer = 2; layer <= 10; ++layer) noise[layer] = forward.get("noise.layer" + std::to_string(layer));
  return noise;
}

// Returns the message of the Error that `action` throws, or "" when it throws none.
template <typename Action>
std::string error_message(Action action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A copy of `file` with its tensors edited by `edit` (file order kept).
TensorFile edited_copy(const TensorFile& file, const std::function<void(TensorFile&)>& edit) {
  TensorFile copy = file;
  copy.path = "edited.safetensors";
  edit(copy);
  return copy;
}

void remove_tensor(TensorFile& file, const std::string& name) {
  file.tensors.erase(name);
  file.names.erase(std::find(file.names.begin(), file.names.end(), name));
}

TEST(StyleGAN2, NumpyStreamsMatch) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& streams = fixture(dir + "/streams.safetensors");

  for (uint32_t seed : {0u, 1u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    torch::Tensor expected = streams.get("mt19937_seed" + std::to_string(seed) + "_uint32_first10_i64");
    NumpyRandomState rng(seed);
    for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(rng.next_uint32(), expected[i].item<int64_t>()) << "output " << i;
  }

  NumpyRandomState seeded(1);
  torch::Tensor state = streams.get("mt19937_seed1_state_after_seeding_i64");
  for (int64_t i = 0; i < 624; ++i) ASSERT_EQ(seeded.state()[i], state[i].item<int64_t>()) << "word " << i;

  NumpyRandomState uniform(1);
  torch::Tensor samples = streams.get("random_sample_seed1_first10_f64");
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(uniform.random_sample(), samples[i].item<double>()) << "sample " << i;

  for (auto [name, seed] : std::vector<std::pair<std::string, uint32_t>>{{"zds_stream_seed1", 1}, {"noise_stream_seed0", 0}}) {
    SCOPED_TRACE(name);
    torch::Tensor f64 = streams.get(name + "_f64");
    NumpyRandomState rng(seed);
    std::vector<double> values(f64.numel());
    for (double& value : values) value = rng.standard_normal();
    EXPECT_TRUE(at::equal(at::tensor(values, at::kDouble), f64));

    torch::Tensor f32 = streams.get(name + "_f32");
    NumpyRandomState rng32(seed);
    std::vector<float> floats = rng32.standard_normal_f32(f32.numel());
    EXPECT_TRUE(at::equal(at::from_blob(floats.data(), {f32.numel()}, at::kFloat), f32));
  }
}

TEST(StyleGAN2, LoadsTinyFixture) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& file = fixture(dir + "/generator.safetensors");
  ASSERT_TRUE(is_stylegan2(file));
  auto g = load_tiny(dir);

  EXPECT_EQ(g->architecture(), "stylegan2");
  EXPECT_EQ(g->image_size(), 64);
  EXPECT_EQ(g->latent_size(), 64);
  EXPECT_EQ(g->default_layer(), 6);
  EXPECT_EQ(g->source(), file.path);
  EXPECT_TRUE(at::equal(g->latent_avg(), file.get("latent_avg")));

  // Parameters only: every g_ema tensor except the noise maps and the FIR kernels.
  int64_t parameters = 0;
  for (const std::string& name : file.names) {
    bool buffer = name.find("noises.") != std::string::npos || name.find(".kernel") != std::string::npos;
    if (name.rfind("g_ema.", 0) == 0 && !buffer) parameters += file.get(name).numel();
  }
  EXPECT_EQ(g->parameter_count(), parameters);

  struct Expected {
    int index;
    int64_t key_channels, key_size, value_channels, value_size;
  };
  const std::vector<Expected> table = {{2, 64, 4, 64, 4},    {3, 64, 4, 64, 8},    {4, 64, 8, 64, 8},
                                       {5, 64, 8, 64, 16},   {6, 64, 16, 64, 16},  {7, 64, 16, 48, 32},
                                       {8, 48, 32, 48, 32},  {9, 48, 32, 32, 64},  {10, 32, 64, 32, 64}};
  ASSERT_EQ(g->layers().size(), table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    SCOPED_TRACE("layer " + std::to_string(table[i].index));
    const LayerInfo& info = g->layers()[i];
    EXPECT_EQ(info.index, table[i].index);
    EXPECT_EQ(info.name, "layer" + std::to_string(table[i].index));
    EXPECT_EQ(info.key_channels, table[i].key_channels);
    EXPECT_EQ(info.key_size, table[i].key_size);
    EXPECT_EQ(info.value_channels, table[i].value_channels);
    EXPECT_EQ(info.value_size, table[i].value_size);
    EXPECT_EQ(info.kernel_size, 3);
    EXPECT_TRUE(info.demodulated);
    std::string weight_name = info.index == 2 ? "g_ema.conv1.conv.weight"
                                              : "g_ema.convs." + std::to_string(info.index - 3) + ".conv.weight";
    EXPECT_EQ(info.weight_name, weight_name);
    EXPECT_TRUE(at::equal(g->weight(info.index), file.get(weight_name)[0]));
  }
  EXPECT_NE(g->describe().find("layer10"), std::string::npos);
}

TEST(StyleGAN2, ForwardMatchesReference) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& forward = fixture(dir + "/forward.safetensors");
  auto g = load_tiny(dir);

  torch::Tensor w = g->map_latents(forward.get("z"));
  EXPECT_LE(max_abs_diff(w, forward.get("w")), kForwardTolerance);

  StyleGAN2::Trace trace;
  torch::Tensor image = g->synthesize(w, recorded_noise(forward), &trace);
  double image_error = max_abs_diff(image, forward.get("image"));
  EXPECT_LE(image_error, kForwardTolerance);

  // Every recorded intermediate, grouped by kind for the summary line.
  std::map<std::string, double> group_error;
  for (const std::string& name : forward.names) {
    if (name.rfind("layer", 0) != 0 && name.rfind("to_rgb", 0) != 0) continue;
    SCOPED_TRACE(name);
    ASSERT_TRUE(trace.count(name)) << "the trace has no " << name;
    double error = max_abs_diff(trace.at(name), forward.get(name));
    EXPECT_LE(error, kForwardTolerance);
    std::string group = name.substr(name.find('.') + 1);
    group_error[group] = std::max(group_error[group], error);
  }

  torch::Tensor w_trunc = g->truncate(w, 0.5);
  double w_trunc_error = max_abs_diff(w_trunc, forward.get("w_trunc05"));
  EXPECT_LE(w_trunc_error, kForwardTolerance);
  double trunc_error = max_abs_diff(g->synthesize(w_trunc, recorded_noise(forward)), forward.get("image_trunc05"));
  EXPECT_LE(trunc_error, kForwardTolerance);

  std::printf("max abs error: w %.3g, image %.3g, w_trunc05 %.3g, image_trunc05 %.3g\n",
              max_abs_diff(w, forward.get("w")), image_error, w_trunc_error, trunc_error);
  for (const auto& [group, error] : group_error) std::printf("max abs error: %s %.3g\n", group.c_str(), error);
}

TEST(StyleGAN2, ReferenceNoiseModeMatches) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& forward = fixture(dir + "/forward.safetensors");
  auto g = load_tiny(dir);

  SampleBatch batch{forward.get("z"), {-1, -1}};
  StyleGAN2::NoiseMaps noise = g->make_noise(batch, "reference");
  for (const auto& [layer, recorded] : recorded_noise(forward)) {
    EXPECT_TRUE(at::equal(noise.at(layer), recorded)) << "noise of layer " << layer;
  }

  SamplingSettings settings;
  settings.noise = "reference";
  EXPECT_LE(max_abs_diff(g->generate(batch, settings), forward.get("image")), kForwardTolerance);
  settings.truncation = 0.5;
  EXPECT_LE(max_abs_diff(g->generate(batch, settings), forward.get("image_trunc05")), kForwardTolerance);
}

TEST(StyleGAN2, ReferenceEditInputsMatch) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& edit = fixture(dir + "/edit_layer6.safetensors");
  auto g = load_tiny(dir);
  SamplingSettings settings;
  settings.latents = "reference";
  settings.noise = "reference";

  SampleBatch first4 = g->latents({0, 1, 2, 3}, settings);
  EXPECT_TRUE(at::equal(first4.z, edit.get("z_images")));
  EXPECT_LE(max_abs_diff(g->generate(first4, settings), edit.get("image_orig_0to3")), kForwardTolerance);

  // Object: the value map of image 1 alone, cropped to object_bounds [3, 5, 9, 11).
  LayerState object = g->run_context(6, g->latents({1}, settings), settings);
  torch::Tensor object_value = g->run_target(6, object, g->weight(6));
  EXPECT_LE(max_abs_diff(object_value.slice(2, 3, 9).slice(3, 5, 11), edit.get("obj_acts")), kForwardTolerance);

  // Goal input: image 2 cropped to paste_bounds [1, 7, 7, 13), with fresh noise for the crop.
  LayerState paste = g->run_context(6, g->latents({2}, settings), settings);
  LayerState goal = g->crop(6, paste, Box{1, 7, 7, 13}, settings);
  EXPECT_LE(max_abs_diff(goal.key, edit.get("goal_in.key")), kForwardTolerance);
  EXPECT_LE(max_abs_diff(goal.extras.at("style"), edit.get("goal_in.style")), kForwardTolerance);
  EXPECT_TRUE(at::equal(goal.extras.at("noise"), edit.get("goal_in.noise")));

  // The reference's first loss: L1 between the goal and the target run on the crop.
  torch::Tensor weight_before = edit.get("weight_before")[0];
  torch::Tensor goal_value = g->run_target(6, goal, weight_before);
  double loss = (goal_value - edit.get("goal_out.value")).abs().mean().item<double>();
  EXPECT_NEAR(loss, edit.get("losses")[0].item<double>(), 1e-5);

  // The edited weight reproduces the edited images.
  g->set_weight(6, edit.get("weight_after_2001")[0]);
  EXPECT_LE(max_abs_diff(g->generate(first4, settings), edit.get("image_edit_0to3")), 1e-3);
}

TEST(StyleGAN2, SplitMatchesGenerate) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  auto g = load_tiny(dir);

  for (const char* mode : {"sample", "reference", "stored", "zero"}) {
    SamplingSettings settings;
    settings.noise = mode;
    settings.truncation = 0.7;
    SampleBatch batch = g->latents({4, 11, 12}, settings);
    torch::Tensor image = g->generate(batch, settings);
    for (int layer : {2, 3, 4, 6, 7, 9, 10}) {
      SCOPED_TRACE(std::string(mode) + " layer " + std::to_string(layer));
      LayerState state = g->run_context(layer, batch, settings);
      const LayerInfo& info = g->layers()[layer - 2];
      EXPECT_EQ(state.key.sizes(), at::IntArrayRef({3, info.key_channels, info.key_size, info.key_size}));
      torch::Tensor value = g->run_target(layer, state, g->weight(layer));
      EXPECT_EQ(value.sizes(), at::IntArrayRef({3, info.value_channels, info.value_size, info.value_size}));
      EXPECT_LE(max_abs_diff(g->run_render(layer, state, value), image), 1e-5);
    }
  }
}

TEST(StyleGAN2, TargetIsDifferentiable) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  auto g = load_tiny(dir);
  SamplingSettings settings;

  for (int layer : {5, 6}) {
    SCOPED_TRACE("layer " + std::to_string(layer));
    LayerState state = g->run_context(layer, g->latents({0, 1}, settings), settings);
    torch::Tensor plain = g->run_target(layer, state, g->weight(layer));

    torch::Tensor weight = g->weight(layer).requires_grad_(true);
    torch::Tensor value = g->run_target(layer, state, weight);
    EXPECT_LE(max_abs_diff(value.detach(), plain), 1e-6);
    torch::Tensor loss = value.abs().mean();
    std::vector<torch::Tensor> grads = torch::autograd::grad({loss}, {weight});
    ASSERT_EQ(grads.size(), 1u);
    EXPECT_EQ(grads[0].sizes(), weight.sizes());
    EXPECT_GT(grads[0].abs().sum().item<double>(), 0.0);
  }
}

TEST(StyleGAN2, SampleNoiseBatchIndependent) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  auto g = load_tiny(dir);
  SamplingSettings settings;

  torch::Tensor alone = g->generate(g->latents({5}, settings), settings);
  torch::Tensor batched = g->generate(g->latents({3, 5, 8}, settings), settings);
  EXPECT_LE(max_abs_diff(batched[1].unsqueeze(0), alone), 1e-5);

  // The documented stream: RandomState(64 * i + layer).randn(R * R) as float32.
  StyleGAN2::NoiseMaps noise = g->make_noise(g->latents({3, 5}, settings), "sample");
  NumpyRandomState rng(64 * 5 + 6);
  std::vector<float> expected = rng.standard_normal_f32(16 * 16);
  EXPECT_TRUE(at::equal(noise.at(6)[1].reshape({-1}), at::from_blob(expected.data(), {16 * 16}, at::kFloat)));
  EXPECT_FALSE(at::equal(noise.at(5), noise.at(6)));
}

TEST(StyleGAN2, StoredAndZeroNoise) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& file = fixture(dir + "/generator.safetensors");
  auto g = load_tiny(dir);
  SampleBatch batch = g->latents({0, 1}, SamplingSettings());

  StyleGAN2::NoiseMaps stored = g->make_noise(batch, "stored");
  for (int layer = 2; layer <= 10; ++layer) {
    torch::Tensor buffer = file.get("g_ema.noises.noise_" + std::to_string(layer - 2));
    EXPECT_TRUE(at::equal(stored.at(layer)[1], buffer[0])) << "layer " << layer;
  }
  StyleGAN2::NoiseMaps zero = g->make_noise(batch, "zero");
  EXPECT_EQ(zero.at(10).abs().sum().item<double>(), 0.0);

  SamplingSettings settings;
  settings.noise = "zero";
  torch::Tensor w = g->map_latents(batch.z);
  EXPECT_LE(max_abs_diff(g->generate(batch, settings), g->synthesize(w, zero)), 1e-6);

  zero[7] = at::zeros({2, 1, 16, 16});
  EXPECT_NE(error_message([&] { g->synthesize(w, zero); }).find("layer 7 has shape [2, 1, 16, 16], expected [2, 1, 32, 32]"),
            std::string::npos);
  zero[7] = at::zeros({32, 32});
  EXPECT_NE(error_message([&] { g->synthesize(w, zero); }).find("layer 7 has shape [32, 32], expected"),
            std::string::npos);

  settings.noise = "whatever";
  EXPECT_NE(error_message([&] { g->generate(batch, settings); }).find("unknown noise mode 'whatever'"),
            std::string::npos);
}

TEST(StyleGAN2, CropKeepsSampleNoise) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  auto g = load_tiny(dir);
  SamplingSettings settings;
  LayerState state = g->run_context(7, g->latents({9}, settings), settings);

  // Layer 7 upsamples 16x16 keys to 32x32 values, so the value box is twice the key box.
  LayerState cropped = g->crop(7, state, Box{2, 3, 6, 9}, settings);
  EXPECT_TRUE(at::equal(cropped.key, state.key.slice(2, 2, 6).slice(3, 3, 9)));
  EXPECT_TRUE(at::equal(cropped.extras.at("noise"), state.extras.at("noise").slice(2, 4, 12).slice(3, 6, 18)));
  EXPECT_TRUE(at::equal(cropped.extras.at("rgb"), state.extras.at("rgb").slice(2, 4, 12).slice(3, 6, 18)));
  EXPECT_EQ(cropped.extras.count("noise.layer8"), 0u);
  EXPECT_EQ(g->run_target(7, cropped, g->weight(7)).sizes(), at::IntArrayRef({1, 48, 8, 12}));

  EXPECT_NE(error_message([&] { g->crop(7, state, Box{0, 0, 17, 4}, settings); }).find("outside the 16x16 key map"),
            std::string::npos);
}

TEST(StyleGAN2, SetWeightRecomputesDemodulation) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  auto g = load_tiny(dir);
  SamplingSettings settings;
  SampleBatch batch = g->latents({0}, settings);
  torch::Tensor image = g->generate(batch, settings);
  std::string fingerprint = g->fingerprint();
  torch::Tensor original = g->weight(8);

  // Demodulation divides by the weight's norm, so scaling the weight changes nothing.
  g->set_weight(8, original * 3.0);
  EXPECT_LE(max_abs_diff(g->generate(batch, settings), image), 1e-5);
  EXPECT_TRUE(at::equal(g->weight(8), original * 3.0));

  torch::Tensor changed = original.clone();
  changed.select(1, 0).mul_(-5.0);
  g->set_weight(8, changed);
  EXPECT_GT(max_abs_diff(g->generate(batch, settings), image), 1e-2);
  EXPECT_EQ(g->fingerprint(), fingerprint);

  g->set_weight(8, original);
  EXPECT_LE(max_abs_diff(g->generate(batch, settings), image), 1e-6);
  EXPECT_NE(error_message([&] { g->set_weight(8, original.slice(0, 0, 4)); }).find("expected [48, 48, 3, 3]"),
            std::string::npos);
  EXPECT_NE(error_message([&] { g->weight(11); }).find("layers 2 to 10"), std::string::npos);
}

TEST(StyleGAN2, CheckpointFormatsAgree) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  auto reference = load_tiny(dir);
  SamplingSettings settings;
  SampleBatch batch = reference->latents({0, 1}, settings);
  torch::Tensor image = reference->generate(batch, settings);

  for (const char* name : {"generator.pt", "generator_legacy.pt"}) {
    SCOPED_TRACE(name);
    auto g = load_tiny(dir, name);
    EXPECT_EQ(g->fingerprint(), reference->fingerprint());
    EXPECT_TRUE(at::equal(g->generate(batch, settings), image));
  }
}

TEST(StyleGAN2, BareStateDictLoads) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& file = fixture(dir + "/generator.safetensors");
  auto released = load_tiny(dir);

  TensorFile bare;
  bare.path = "bare.safetensors";
  for (const std::string& name : file.names) {
    if (name.rfind("g_ema.", 0) != 0) continue;
    bare.names.push_back(name.substr(6));
    bare.tensors[name.substr(6)] = file.get(name);
  }
  ASSERT_TRUE(is_stylegan2(bare));
  auto g = load_stylegan2(bare);
  auto& bare_g = dynamic_cast<StyleGAN2&>(*g);
  EXPECT_NE(g->describe().find("not in the checkpoint"), std::string::npos);
  EXPECT_EQ(g->layers().back().weight_name, "convs.7.conv.weight");

  // The fixture's latent_avg is the mean over torch latents, this one over numpy latents:
  // both estimate the same mean.
  EXPECT_LE(max_abs_diff(bare_g.latent_avg(), released->latent_avg()), 0.1);
  SamplingSettings settings;
  SampleBatch batch = g->latents({0, 1}, settings);
  EXPECT_TRUE(at::equal(g->generate(batch, settings), released->generate(batch, settings)));
}

TEST(StyleGAN2, MissingTensorIsNamed) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& file = fixture(dir + "/generator.safetensors");
  TensorFile broken = edited_copy(file, [](TensorFile& f) {
    remove_tensor(f, "g_ema.convs.3.noise.weight");
    remove_tensor(f, "g_ema.to_rgbs.2.bias");
  });
  std::string message = error_message([&] { load_stylegan2(broken); });
  EXPECT_NE(message.find("edited.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("missing tensors 'g_ema.convs.3.noise.weight', 'g_ema.to_rgbs.2.bias'"), std::string::npos)
      << message;

  TensorFile no_mapping = edited_copy(file, [](TensorFile& f) { remove_tensor(f, "g_ema.style.1.weight"); });
  message = error_message([&] { load_stylegan2(no_mapping); });
  EXPECT_NE(message.find("'g_ema.style.1.weight'"), std::string::npos) << message;

  TensorFile other;
  other.path = "other.safetensors";
  other.names = {"weight"};
  other.tensors["weight"] = at::zeros({2});
  EXPECT_FALSE(is_stylegan2(other));
  EXPECT_NE(error_message([&] { load_stylegan2(other); }).find("not a StyleGAN2 checkpoint"), std::string::npos);
}

TEST(StyleGAN2, WrongShapeIsNamed) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& file = fixture(dir + "/generator.safetensors");
  TensorFile broken = edited_copy(file, [](TensorFile& f) { f.tensors["g_ema.convs.3.activate.bias"] = at::zeros({63}); });
  std::string message = error_message([&] { load_stylegan2(broken); });
  EXPECT_NE(message.find("tensor 'g_ema.convs.3.activate.bias' has shape [63], expected [64]"), std::string::npos)
      << message;

  TensorFile bad_kernel = edited_copy(file, [](TensorFile& f) { f.tensors["g_ema.convs.2.conv.blur.kernel"] = at::ones({4, 4}); });
  message = error_message([&] { load_stylegan2(bad_kernel); });
  EXPECT_NE(message.find("'g_ema.convs.2.conv.blur.kernel' is not the [1,3,3,1] FIR kernel"), std::string::npos)
      << message;

  TensorFile bad_avg = edited_copy(file, [](TensorFile& f) { f.tensors["latent_avg"] = at::zeros({1, 64}); });
  message = error_message([&] { load_stylegan2(bad_avg); });
  EXPECT_NE(message.find("'latent_avg' has shape [1, 64], expected [64]"), std::string::npos) << message;
}

TEST(StyleGAN2, UnknownTensorIsNamed) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  const TensorFile& file = fixture(dir + "/generator.safetensors");
  TensorFile broken = edited_copy(file, [](TensorFile& f) {
    f.names.push_back("g_ema.convs.8.conv.modulation.weight");
    f.tensors["g_ema.convs.8.conv.modulation.weight"] = at::zeros({32, 64});
  });
  std::string message = error_message([&] { load_stylegan2(broken); });
  EXPECT_NE(message.find("unknown tensor 'g_ema.convs.8.conv.modulation.weight'"), std::string::npos) << message;

  // Tensors outside g_ema (a training checkpoint's discriminator) are ignored.
  TensorFile training = edited_copy(file, [](TensorFile& f) {
    f.names.push_back("d.convs.0.0.weight");
    f.tensors["d.convs.0.0.weight"] = at::zeros({8, 3, 1, 1});
  });
  EXPECT_EQ(error_message([&] { load_stylegan2(training); }), "");
}

TEST(StyleGAN2, RandomConfigBuilds) {
  StyleGAN2Config config = testing::small_stylegan2_config();
  config.noise_buffers = false;
  TensorFile file = make_random_stylegan2(config, 7);
  auto g = load_stylegan2(file);
  EXPECT_EQ(g->image_size(), 32);
  EXPECT_EQ(g->layers().size(), 7u);
  EXPECT_EQ(g->layers().back().value_channels, 8);
  EXPECT_EQ(make_random_stylegan2(config, 7).tensors.at("g_ema.convs.5.conv.weight").sizes(),
            at::IntArrayRef({1, 8, 8, 3, 3}));
  EXPECT_EQ(load_stylegan2(make_random_stylegan2(config, 7))->fingerprint(), g->fingerprint());
  EXPECT_NE(load_stylegan2(make_random_stylegan2(config, 8))->fingerprint(), g->fingerprint());

  SamplingSettings settings;
  settings.noise = "stored";
  SampleBatch batch = g->latents({0}, settings);
  EXPECT_NE(error_message([&] { g->generate(batch, settings); }).find("no noise buffers"), std::string::npos);
  settings.noise = "sample";
  EXPECT_EQ(g->generate(batch, settings).sizes(), at::IntArrayRef({1, 3, 32, 32}));

  EXPECT_EQ(config_f_channels(256).at(128), 256);
  EXPECT_EQ(config_f_channels(256).count(512), 0u);
}

TEST(StyleGAN2, ScratchPoolReusesBlocks) {
  void* first = nullptr;
  {
    torch::Tensor tensor = scratch_empty({4, 512, 256});  // 2 MiB
    first = tensor.data_ptr();
    tensor.fill_(1.f);
  }
  EXPECT_GE(scratch_pool_bytes(), size_t{2} << 20);

  torch::Tensor smaller = scratch_empty({3, 512, 256});  // 1.5 MiB
  EXPECT_EQ(smaller.data_ptr(), first);
  EXPECT_EQ(smaller.sizes(), at::IntArrayRef({3, 512, 256}));
  EXPECT_EQ(smaller.dtype(), at::kFloat);

  torch::Tensor small = scratch_empty({2, 3});
  EXPECT_EQ(small.numel(), 6);
}

}  // namespace
}  // namespace rankone

namespace rankone {
namespace {

// The key-only context pass skips later noise and the toRGB branch, but must give the same key.
TEST(StyleGAN2, ContextKeyMatchesContext) {
  StyleGAN2Config config = testing::small_stylegan2_config();
  std::unique_ptr<Generator> g = load_stylegan2(make_random_stylegan2(config, 9));
  for (const std::string& noise : {"sample", "reference", "stored", "zero"}) {
    SamplingSettings settings;
    settings.noise = noise;
    settings.truncation = 0.7;
    SampleBatch batch = g->latents({4, 0, 11}, settings);
    for (const LayerInfo& info : g->layers()) {
      SCOPED_TRACE("noise " + noise + ", layer " + std::to_string(info.index));
      at::Tensor expected = g->run_context(info.index, batch, settings).key;
      at::Tensor actual = g->run_context_key(info.index, batch, settings);
      ASSERT_EQ(actual.sizes(), expected.sizes());
      EXPECT_TRUE(at::equal(actual, expected));
    }
  }
}

TEST(StyleGAN2, NoiseUntilLayerIsPrefix) {
  StyleGAN2Config config;
  config.resolution = 16;
  config.style_size = 8;
  config.mapping_layers = 1;
  config.channels = {{4, 8}, {8, 8}, {16, 8}};
  StyleGAN2 g(make_random_stylegan2(config, 3));
  SamplingSettings settings;
  SampleBatch batch = g.latents({2, 5}, settings);
  for (const std::string& mode : {"sample", "reference", "stored", "zero"}) {
    StyleGAN2::NoiseMaps all = g.make_noise(batch, mode);
    StyleGAN2::NoiseMaps some = g.make_noise_until(batch, mode, 4);
    ASSERT_EQ(some.size(), 3u) << mode;
    for (const auto& [layer, map] : some) EXPECT_TRUE(at::equal(map, all.at(layer))) << mode << " layer " << layer;
  }
}

}  // namespace
}  // namespace rankone

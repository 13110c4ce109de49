// The closed-form layer expansions must reproduce run_target and its derivative in Lambda.
#include "rankone/formats/tensor_file.h"
#include "rankone/models/layer_expansion.h"
#include "rankone/models/sequential.h"
#include "rankone/models/stylegan2.h"
#include "rankone/rewriting/rewriter.h"

#include "test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>
#include <torch/torch.h>

namespace rankone {
namespace {

at::Tensor random_directions(int64_t rank, int64_t channels) {
  return std::get<0>(at::linalg_qr(torch::randn({channels, rank}))).t().contiguous();
}

// The derivative of run_target(W0 + einsum(Lambda + t V, D)) in t at t = 0, flattened to [O, P],
// by double backward through the layer itself.
at::Tensor directional_derivative(const Generator& g, int layer, const LayerState& state, const at::Tensor& d,
                                  const at::Tensor& lambda, const at::Tensor& direction) {
  at::Tensor w0 = g.weight(layer);
  at::Tensor lambda_var = lambda.clone().requires_grad_(true);
  at::Tensor output = g.run_target(layer, state, w0 + delta_of(lambda_var, d));
  at::Tensor cotangent = at::zeros_like(output).requires_grad_(true);
  at::Tensor vjp = torch::autograd::grad({(output * cotangent).sum()}, {lambda_var}, {}, true, true)[0];
  at::Tensor jvp = torch::autograd::grad({(vjp * direction).sum()}, {cotangent})[0];
  return flatten_channels(jvp);
}

// Checks the expansion of `layer` on `state` against run_target at a random Lambda.
void expect_expansion_matches(const Generator& g, int layer, const LayerState& state, int64_t rank,
                              double lambda_size) {
  SCOPED_TRACE("layer " + std::to_string(layer));
  at::Tensor w0 = g.weight(layer);
  at::Tensor d = random_directions(rank, w0.size(1));
  std::optional<LayerExpansion> expansion = g.expand_target(layer, state, d);
  ASSERT_TRUE(expansion.has_value());
  at::Tensor lambda = lambda_size * w0.abs().mean() * torch::randn({w0.size(0), rank, w0.size(2), w0.size(3)});

  at::Tensor expected = flatten_channels(g.run_target(layer, state, w0 + delta_of(lambda, d)));
  at::Tensor actual = expansion_output(*expansion, lambda);
  ASSERT_EQ(actual.sizes(), expected.sizes());
  double tolerance = 1e-4 * (1 + expected.abs().max().item<double>());
  EXPECT_LT((actual - expected).abs().max().item<double>(), tolerance);
  EXPECT_LT((expansion_output(*expansion, at::zeros_like(lambda)) -
             flatten_channels(g.run_target(layer, state, w0)))
                .abs()
                .max()
                .item<double>(),
            tolerance);

  at::Tensor direction = torch::randn(lambda.sizes());
  at::Tensor jvp = directional_derivative(g, layer, state, d, lambda, direction);
  at::Tensor jacobian = expansion_jacobian(*expansion, lambda);  // [O, P, m]
  ASSERT_EQ(jacobian.size(2), rank * w0.size(2) * w0.size(3));
  at::Tensor contracted = at::bmm(jacobian, direction.reshape({w0.size(0), -1, 1})).squeeze(2);
  EXPECT_LT((contracted - jvp).abs().max().item<double>(), 1e-4 * (1 + jvp.abs().max().item<double>()));
}

// Three sequential blocks that cover each expansion case: a transposed convolution with batch
// norm and leaky ReLU, a convolution with bias and ReLU, and a transposed convolution with tanh.
std::unique_ptr<Generator> sequential_generator(const std::string& middle_norm) {
  torch::manual_seed(11);
  TensorFile weights;
  weights.path = "synthetic";

  auto put = [&](const std::string& name, at::Tensor tensor) {
    weights.names.push_back(name);
    weights.tensors[name] = tensor;
  };
  put("b0.weight", torch::randn({6, 8, 4, 4}));
  put("b1.weight", 0.3 * torch::randn({8, 12, 4, 4}));
  put("bn1.weight", 1 + 0.2 * torch::randn({12}));
  put("bn1.bias", 0.1 * torch::randn({12}));
  put("bn1.running_mean", 0.1 * torch::randn({12}));
  put("bn1.running_var", 0.5 + torch::rand({12}));
  put("b2.weight", 0.3 * torch::randn({10, 12, 3, 3}));
  put("b2.bias", 0.1 * torch::randn({10}));
  put("b3.weight", 0.3 * torch::randn({10, 3, 4, 4}));
  put("b3.bias", 0.1 * torch::randn({3}));

  nlohmann::json middle_norm_json = {{"type", middle_norm}};
  if (middle_norm == "batch_norm") middle_norm_json["prefix"] = "bn1";
  nlohmann::json card = {
      {"name", "synthetic"},
      {"latent", {{"size", 6}, {"distribution", "normal"}}},
      {"blocks",
       {{{"conv", {{"type", "conv_transpose"}, {"weight", "b0.weight"}, {"in", 6}, {"out", 8}, {"kernel", 4}}}},
        {{"conv",
          {{"type", "conv_transpose"}, {"weight", "b1.weight"}, {"in", 8}, {"out", 12}, {"kernel", 4},
           {"stride", 2}, {"padding", 1}}},
         {"norm", middle_norm_json},
         {"activation", {{"type", "leaky_relu"}, {"slope", 0.2}}}},
        {{"conv",
          {{"type", "conv"}, {"weight", "b2.weight"}, {"bias", "b2.bias"}, {"in", 12}, {"out", 10}, {"kernel", 3},
           {"padding", 1}}},
         {"activation", {{"type", "relu"}}}},
        {{"conv",
          {{"type", "conv_transpose"}, {"weight", "b3.weight"}, {"bias", "b3.bias"}, {"in", 10}, {"out", 3},
           {"kernel", 4}, {"stride", 2}, {"padding", 1}}},
         {"activation", {{"type", "tanh"}}}}}}};
  return load_sequential(card, "synthetic.json", weights);
}

TEST(LayerExpansion, SequentialMatchesTarget) {
  std::unique_ptr<Generator> g = sequential_generator("batch_norm");
  SamplingSettings settings;
  for (int layer : {1, 2, 3}) {
    LayerState state = g->run_context(layer, g->latents({0, 1}, settings), settings);
    expect_expansion_matches(*g, layer, state, 1, 0.5);
    expect_expansion_matches(*g, layer, state, 3, 0.5);
    Box box{1, 0, 3, 2};
    expect_expansion_matches(*g, layer, g->crop(layer, state, box, settings), 2, 0.5);
  }
}

TEST(LayerExpansion, PixelNormHasNone) {
  std::unique_ptr<Generator> g = sequential_generator("pixel_norm");
  SamplingSettings settings;
  LayerState state = g->run_context(1, g->latents({0}, settings), settings);
  EXPECT_FALSE(g->expand_target(1, state, random_directions(1, 8)).has_value());
  EXPECT_TRUE(g->expand_target(2, g->run_context(2, g->latents({0}, settings), settings), random_directions(1, 12))
                  .has_value());
}

TEST(LayerExpansion, StyleGAN2MatchesTarget) {
  StyleGAN2Config config = testing::small_stylegan2_config();
  std::unique_ptr<Generator> g = load_stylegan2(make_random_stylegan2(config, 5));
  SamplingSettings settings;
  torch::manual_seed(2);
  for (const LayerInfo& info : g->layers()) {
    LayerState state = g->run_context(info.index, g->latents({3}, settings), settings);
    // Lambda as large as the weight itself, so that demodulation is far from linear.
    expect_expansion_matches(*g, info.index, state, 1, 1.0);
    expect_expansion_matches(*g, info.index, state, 2, 1.0);
    Box box{0, 1, 2, std::min<int64_t>(3, info.key_size)};
    expect_expansion_matches(*g, info.index, g->crop(info.index, state, box, settings), 1, 1.0);
  }
}

TEST(LayerExpansion, StyleGAN2BatchHasNone) {
  StyleGAN2Config config;
  config.resolution = 8;
  config.style_size = 8;
  config.mapping_layers = 1;
  config.channels = {{4, 8}, {8, 8}};
  std::unique_ptr<Generator> g = load_stylegan2(make_random_stylegan2(config, 5));
  SamplingSettings settings;
  LayerState state = g->run_context(3, g->latents({0, 1}, settings), settings);
  EXPECT_FALSE(g->expand_target(3, state, random_directions(1, 8)).has_value());
}

}  // namespace
}  // namespace rankone

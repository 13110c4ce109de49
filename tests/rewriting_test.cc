#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/model_store.h"
#include "rankone/models/sequential.h"
#include "rankone/rewriting/masks.h"
#include "rankone/rewriting/patch.h"
#include "rankone/rewriting/rewriter.h"
#include "test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <fstream>
#include <functional>

namespace rankone {
namespace {

// A two-block linear generator with random weights: block 1 (conv 3x3, 16 -> 3 channels,
// no norm, no activation) is the layer under test, so its output is linear in the weight.
std::unique_ptr<Generator> synthetic_linear_generator() {
  torch::manual_seed(7);
  TensorFile weights;
  weights.path = "synthetic";
  weights.names = {"b0.weight", "b1.weight", "b1.bias"};
  weights.tensors["b0.weight"] = torch::randn({8, 16, 4, 4});
  weights.tensors["b1.weight"] = torch::randn({3, 16, 3, 3});
  weights.tensors["b1.bias"] = torch::randn({3});
  nlohmann::json card = {
      {"name", "synthetic"},
      {"latent", {{"size", 8}, {"distribution", "normal"}}},
      {"blocks",
       {{{"conv", {{"type", "conv_transpose"}, {"weight", "b0.weight"}, {"in", 8}, {"out", 16}, {"kernel", 4}}}},
        {{"conv",
          {{"type", "conv"}, {"weight", "b1.weight"}, {"bias", "b1.bias"}, {"in", 16}, {"out", 3}, {"kernel", 3},
           {"padding", 1}}}}}}};
  return load_sequential(card, "synthetic.json", weights);
}

TEST(DirectSolver, RecoversPlantedLambda) {
  std::unique_ptr<Generator> g = synthetic_linear_generator();
  SamplingSettings settings;
  torch::manual_seed(3);
  at::Tensor d = std::get<0>(at::linalg_qr(torch::randn({16, 2}))).t().contiguous();  // [2, 16] orthonormal
  at::Tensor w0 = g->weight(1);
  at::Tensor planted = 0.3 * torch::randn({3, 2, 3, 3});

  Goal goal;
  goal.inputs = g->run_context(1, g->latents({0, 1}, settings), settings);
  goal.values = g->run_target(1, goal.inputs, w0 + delta_of(planted, d)).detach();

  SolverSettings solver;  // direct by default
  EditResult result = solve_edit(*g, 1, goal, d, solver);
  EXPECT_LT(result.goal_loss_final, 1e-4 * goal.values.abs().mean().item<double>());
  EXPECT_LT((result.lambda - planted).abs().max().item<double>(), 1e-3);
  EXPECT_GT(result.goal_loss_initial, 0.1);
}

TEST(DirectSolver, WeightStaysInSubspace) {
  std::unique_ptr<Generator> g = synthetic_linear_generator();
  SamplingSettings settings;
  at::Tensor d = std::get<0>(at::linalg_qr(torch::randn({16, 1}))).t().contiguous();
  Goal goal;
  goal.inputs = g->run_context(1, g->latents({4}, settings), settings);
  goal.values = torch::randn({1, 3, 4, 4});  // unreachable: the solver must stay in span(D) anyway
  EditResult result = solve_edit(*g, 1, goal, d, SolverSettings{});
  at::Tensor delta = result.weight_after - result.weight_before;
  EXPECT_LT((delta - project_on_directions(delta, d)).abs().max().item<double>(), 1e-5);
  EXPECT_LE(result.goal_loss_final, result.goal_loss_initial);
}

// A layer with a pixel norm has no closed-form expansion, so the solver differentiates
// run_target instead.
TEST(DirectSolver, PixelNormLayerUsesAutograd) {
  torch::manual_seed(5);
  TensorFile weights;
  weights.path = "synthetic";
  weights.names = {"b0.weight", "b1.weight"};
  weights.tensors["b0.weight"] = torch::randn({8, 16, 4, 4});
  weights.tensors["b1.weight"] = 0.3 * torch::randn({3, 16, 3, 3});
  nlohmann::json card = {
      {"name", "synthetic"},
      {"latent", {{"size", 8}, {"distribution", "normal"}}},
      {"blocks",
       {{{"conv", {{"type", "conv_transpose"}, {"weight", "b0.weight"}, {"in", 8}, {"out", 16}, {"kernel", 4}}}},
        {{"conv", {{"type", "conv"}, {"weight", "b1.weight"}, {"in", 16}, {"out", 3}, {"kernel", 3}, {"padding", 1}}},
         {"norm", {{"type", "pixel_norm"}}},
         {"activation", {{"type", "leaky_relu"}, {"slope", 0.2}}}}}}};
  std::unique_ptr<Generator> g = load_sequential(card, "synthetic.json", weights);
  SamplingSettings settings;
  at::Tensor d = std::get<0>(at::linalg_qr(torch::randn({16, 1}))).t().contiguous();
  Goal goal;
  goal.inputs = g->run_context(1, g->latents({0}, settings), settings);
  ASSERT_FALSE(g->expand_target(1, goal.inputs, d).has_value());
  at::Tensor w0 = g->weight(1);
  at::Tensor planted = 0.2 * torch::randn({3, 1, 3, 3});
  goal.values = g->run_target(1, goal.inputs, w0 + delta_of(planted, d)).detach();

  EditResult result = solve_edit(*g, 1, goal, d, SolverSettings{});
  // The per-channel Jacobian blocks ignore the norm's coupling between channels, so the solve
  // stalls short of the planted edit, at about 12% of the initial loss.
  EXPECT_LT(result.goal_loss_final, 0.2 * result.goal_loss_initial);
  at::Tensor delta = result.weight_after - result.weight_before;
  EXPECT_LT((delta - project_on_directions(delta, d)).abs().max().item<double>(), 1e-5);
}

// The bundled face model with its sunglasses request.
class BundledEdit : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(models_dir() + "/dcgan-celeba32/generator.pt")) {
      GTEST_SKIP() << "dcgan-celeba32 not fetched (run `rankone fetch dcgan-celeba32`)";
    }
    generator_ = load_generator("dcgan-celeba32");
    request_ = load_request(rankone::source_dir() + "/requests/dcgan-sunglasses.json");
    request_.statistics.samples = 200;
  }

  EditResult edit() {
    int layer = request_layer(*generator_, request_);
    SecondMoment moment = compute_second_moment(*generator_, layer, request_.sampling, request_.statistics);
    return rewrite(*generator_, request_, moment);
  }

  std::unique_ptr<Generator> generator_;
  Request request_;
};

TEST_F(BundledEdit, PatchAppliesAndRevertsExactly) {
  EditResult result = edit();
  EXPECT_LT(result.goal_loss_final, 0.8 * result.goal_loss_initial);
  at::Tensor original = generator_->weight(result.layer);
  Patch patch = make_patch(*generator_, result, request_.to_json(), original);
  std::string path = testing::temp_dir() + "/sunglasses.safetensors";
  save_patch(path, patch);
  Patch loaded = load_patch(path);
  EXPECT_TRUE(loaded.lambda.equal(patch.lambda));
  EXPECT_EQ(loaded.layer, result.layer);

  PatchStack stack(*generator_);
  stack.apply(loaded);
  EXPECT_LT((generator_->weight(result.layer) - result.weight_after).abs().max().item<double>(), 1e-6);
  stack.apply(loaded, 0.5);
  EXPECT_EQ(stack.size(), 2u);
  EXPECT_TRUE(stack.revert_last());
  stack.revert_all();
  EXPECT_TRUE(generator_->weight(result.layer).equal(original));
}

TEST_F(BundledEdit, PatchForOtherModelRejected) {
  EditResult result = edit();
  Patch patch = make_patch(*generator_, result, request_.to_json(), generator_->weight(result.layer));
  patch.base_weight_sha256 = std::string(64, '0');
  PatchStack stack(*generator_);
  try {
    stack.apply(patch);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("made for another model"), std::string::npos) << e.what();
  }
  EXPECT_EQ(stack.size(), 0u);
}

TEST_F(BundledEdit, BadRequestsRejected) {
  struct Case {
    std::function<void(Request&)> change;
    const char* message;
  };
  std::vector<Case> cases = {
      {[](Request& r) { r.layer = 7; }, "unknown layer 7"},
      {[](Request& r) { r.rank = 65; }, "is larger than layer 3's key size 64"},
      {[](Request& r) { r.object->mask = at::zeros({256, 256}, at::kByte).index_put_({0, 0}, 255); },
       "covers no pixel"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    Request request = request_;
    cases[i].change(request);
    try {
      SecondMoment moment;
      moment.c = at::eye(64, at::kDouble);
      rewrite(*generator_, request, moment);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(cases[i].message), std::string::npos) << e.what();
    }
  }
}

TEST(Request, ParseErrorsNameTheField) {
  std::string white = encode_mask_url(at::full({8, 8}, 255, at::kByte));
  std::string empty = encode_mask_url(at::zeros({8, 8}, at::kByte));
  nlohmann::json good = {{"object", {1, white}}, {"paste", {2, white}}, {"key", {{2, white}}}};
  EXPECT_NO_THROW(Request::from_json(good, "ok.json"));

  struct Case {
    std::function<void(nlohmann::json&)> change;
    const char* message;
  };
  std::vector<Case> cases = {
      {[&](nlohmann::json& j) { j["paste"] = {2, empty}; }, "paste: the mask on image 2 is empty"},
      {[&](nlohmann::json& j) { j["object"] = {-4, white}; }, "image number -4 is negative"},
      {[&](nlohmann::json& j) { j["key"][0] = {1, "data:image/png;base64,%%%"}; }, "key[0]: invalid base64"},
      {[&](nlohmann::json& j) { j.erase("object"); }, "missing 'object'"},
      {[&](nlohmann::json& j) { j["rank"] = 0; }, "rank 0 out of range"},
      {[&](nlohmann::json& j) { j["solver"] = "sgd"; }, "unknown solver 'sgd'"},
      {[&](nlohmann::json& j) { j["layer"] = "three"; }, "field 'layer' has the wrong type"},
      {[&](nlohmann::json& j) { j["rank"] = 1.5; }, "field 'rank' must be a whole number, got 1.5"},
      {[&](nlohmann::json& j) { j["sampling"] = {{"noise", "pink"}}; }, "unknown noise mode 'pink'"},
      {[&](nlohmann::json& j) { j["key"] = 5; }, "'key' must be a list"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    nlohmann::json j = good;
    cases[i].change(j);
    try {
      Request::from_json(j, "bad.json");
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(cases[i].message), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
    }
  }
}

TEST(Request, RoundTripKeepsUnknownFields) {
  std::string white = encode_mask_url(at::full({8, 8}, 255, at::kByte));
  nlohmann::json j = {{"object", {1, white}}, {"paste", {2, white}}, {"note", "from the notebook"}, {"layer", 3}};
  Request request = Request::from_json(j, "in.json");
  std::string path = testing::temp_dir() + "/request.json";
  save_request(path, request);
  Request again = load_request(path);
  EXPECT_EQ(again.to_json(), request.to_json());
  EXPECT_EQ(again.to_json()["note"], "from the notebook");
  EXPECT_EQ(*again.layer, 3);
}

}  // namespace
}  // namespace rankone

namespace rankone {
namespace {

TEST(StatisticsCache, CorruptFileRecomputed) {
  std::unique_ptr<Generator> g = synthetic_linear_generator();
  SamplingSettings sampling;
  StatisticsSettings settings{30, 7};
  std::string cache = testing::temp_dir();

  SecondMoment first = load_or_compute_second_moment(*g, 1, sampling, settings, cache);
  EXPECT_FALSE(first.from_cache);
  EXPECT_EQ(first.count, 30 * 4 * 4);
  SecondMoment second = load_or_compute_second_moment(*g, 1, sampling, settings, cache);
  EXPECT_TRUE(second.from_cache);
  EXPECT_TRUE(second.c.equal(first.c));

  // Flip one byte of the matrix: the checksum no longer matches, so the file is not trusted.
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(cache)) files.push_back(entry.path());
  ASSERT_EQ(files.size(), 1u);
  {
    std::fstream file(files[0], std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(-3, std::ios::end);
    char byte = 0;
    file.read(&byte, 1);
    file.seekp(-3, std::ios::end);
    byte = static_cast<char>(byte ^ 0x55);
    file.write(&byte, 1);
  }
  SecondMoment third = load_or_compute_second_moment(*g, 1, sampling, settings, cache);
  EXPECT_FALSE(third.from_cache);
  EXPECT_TRUE(third.c.equal(first.c));

  // Truncated to a few bytes: also recomputed, and other settings get their own entry.
  std::filesystem::resize_file(files[0], 5);
  EXPECT_FALSE(load_or_compute_second_moment(*g, 1, sampling, settings, cache).from_cache);
  EXPECT_FALSE(load_or_compute_second_moment(*g, 1, sampling, {31, 7}, cache).from_cache);
}

TEST(Statistics, MatchesOuterProductSum) {
  std::unique_ptr<Generator> g = synthetic_linear_generator();
  SamplingSettings sampling;
  SecondMoment moment = compute_second_moment(*g, 1, sampling, {12, 5});
  at::Tensor keys = g->run_context(1, g->latents({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, sampling), sampling).key;
  at::Tensor rows = keys.permute({0, 2, 3, 1}).reshape({-1, 16}).to(at::kDouble);
  at::Tensor expected = at::zeros({16, 16}, at::kDouble);
  for (int64_t p = 0; p < rows.size(0); ++p) expected += at::outer(rows[p], rows[p]);
  expected /= rows.size(0);
  EXPECT_LT((moment.c - expected).abs().max().item<double>(), 1e-9);
}

TEST_F(BundledEdit, EraseLowersGoalLoss) {
  request_.mode = "erase";
  request_.object.reset();
  EditResult result = edit();
  EXPECT_LT(result.goal_loss_final, result.goal_loss_initial);
  EXPECT_EQ(result.d.size(0), 1);
  EXPECT_EQ(result.d.sum().item<float>(), 1.0f);  // one unit, as a one-hot row
}

}  // namespace
}  // namespace rankone

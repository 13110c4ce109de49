#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/generator.h"
#include "rankone/models/model_store.h"
#include "rankone/models/sequential.h"
#include "test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

namespace rankone {
namespace {

namespace fs = std::filesystem;

// The bundled model's weights: fetched into $RANKONE_MODELS, or the shared models folder.
std::string dcgan_weights() {
  std::string fetched = models_dir() + "/dcgan-celeba32/generator.pt";
  if (fs::exists(fetched)) return fetched;
  std::string fixtures = testing::fixtures_dir();
  if (!fixtures.empty()) {
    std::string shared = (fs::path(fixtures).parent_path() / "models/dcgan-celeba32/generator.pt").string();
    if (fs::exists(shared)) return shared;
  }
  return "";
}

nlohmann::json dcgan_card() {
  std::ifstream in(cards_dir() + "/dcgan-celeba32.json");
  return nlohmann::json::parse(in);
}

class DCGAN : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_path_ = dcgan_weights();
    if (weights_path_.empty()) GTEST_SKIP() << "dcgan-celeba32 weights not found (run `rankone fetch dcgan-celeba32`)";
    weights_ = load_tensor_file(weights_path_);
    generator_ = load_sequential(dcgan_card(), "dcgan-celeba32.json", weights_);
  }

  std::string weights_path_;
  TensorFile weights_;
  std::unique_ptr<Generator> generator_;
};

TEST_F(DCGAN, MatchesReferenceForwardPass) {
  std::string fixtures = testing::fixtures_dir();
  if (fixtures.empty()) GTEST_SKIP() << "reference fixtures not found";
  TensorFile forward = load_tensor_file(fixtures + "/dcgan-celeba32/forward.safetensors");
  SampleBatch batch{forward.get("z"), std::vector<int64_t>(16, -1)};
  SamplingSettings settings;
  torch::NoGradGuard no_grad;

  for (int block = 0; block < 4; ++block) {
    SCOPED_TRACE("block " + std::to_string(block));
    at::Tensor expected = forward.get("block" + std::to_string(block) + ".out");
    at::Tensor actual = block == 0 ? generator_->run_context(1, batch, settings).key
                                   : generator_->run_target(block, generator_->run_context(block, batch, settings),
                                                            generator_->weight(block));
    EXPECT_LT((actual - expected).abs().max().item<double>(), 1e-5);
  }
  at::Tensor image = generator_->generate(batch, settings);
  EXPECT_LT((image - forward.get("image")).abs().max().item<double>(), 1e-5);
}

TEST_F(DCGAN, SplitReproducesImage) {
  SamplingSettings settings;
  SampleBatch batch = generator_->latents({0, 1, 2, 3}, settings);
  torch::NoGradGuard no_grad;
  at::Tensor image = generator_->generate(batch, settings);
  for (const LayerInfo& info : generator_->layers()) {
    SCOPED_TRACE("layer " + std::to_string(info.index));
    LayerState state = generator_->run_context(info.index, batch, settings);
    EXPECT_EQ(state.key.sizes(), at::IntArrayRef({4, info.key_channels, info.key_size, info.key_size}));
    at::Tensor value = generator_->run_target(info.index, state, generator_->weight(info.index));
    EXPECT_EQ(value.sizes(), at::IntArrayRef({4, info.value_channels, info.value_size, info.value_size}));
    EXPECT_LT((generator_->run_render(info.index, state, value) - image).abs().max().item<double>(), 1e-6);
  }
}

TEST_F(DCGAN, ImagesIndependentOfBatch) {
  SamplingSettings settings;
  torch::NoGradGuard no_grad;
  at::Tensor alone = generator_->generate(generator_->latents({9}, settings), settings);
  at::Tensor together = generator_->generate(generator_->latents({3, 9, 27}, settings), settings);
  EXPECT_LT((alone[0] - together[1]).abs().max().item<double>(), 1e-6);
}

TEST_F(DCGAN, CanonicalWeightRoundTrip) {
  at::Tensor w = generator_->weight(3);
  EXPECT_EQ(w.sizes(), at::IntArrayRef({32, 64, 4, 4}));  // [out, in, k, k] of a transposed conv
  EXPECT_TRUE(generator_->to_checkpoint_layout(3, w).equal(weights_.get("generator_deconv.3.0.weight")));
  generator_->set_weight(3, w * 2);
  EXPECT_TRUE(generator_->weight(3).equal(w * 2));
}

TEST_F(DCGAN, CardErrorsNameTheProblem) {
  struct Case {
    std::function<void(nlohmann::json&)> change;
    const char* message;
  };
  std::vector<Case> cases = {
      {[](nlohmann::json& c) { c["blocks"][1]["conv"]["weight"] = "generator_deconv.9.0.weight"; },
       "tensor 'generator_deconv.9.0.weight' named by the card is not in"},
      {[](nlohmann::json& c) { c["blocks"][2]["conv"]["out"] = 65; },
       "has shape [128, 64, 4, 4] but the card expects [128, 65, 4, 4]"},
      {[](nlohmann::json& c) { c["blocks"][2]["conv"]["type"] = "deconv"; }, "unknown type 'deconv'"},
      {[](nlohmann::json& c) { c["blocks"][1]["activation"]["type"] = "gelu"; }, "unknown type 'gelu'"},
      {[](nlohmann::json& c) { c["latent"].erase("size"); }, "missing field 'size'"},
      {[](nlohmann::json& c) { c["latent"]["distribution"] = "cauchy"; }, "unknown latent distribution 'cauchy'"},
      {[](nlohmann::json& c) { c["default_layer"] = 9; }, "unknown layer 9"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    nlohmann::json card = dcgan_card();
    cases[i].change(card);
    try {
      load_sequential(card, "card.json", weights_);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(cases[i].message), std::string::npos) << e.what();
    }
  }
}

TEST_F(DCGAN, NanWeightsRejected) {
  TensorFile broken = weights_;
  at::Tensor poisoned = broken.tensors.at("generator_deconv.2.0.weight").clone();
  poisoned[0][0][0][0] = NAN;
  broken.tensors["generator_deconv.2.0.weight"] = poisoned;
  try {
    load_sequential(dcgan_card(), "card.json", broken);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'generator_deconv.2.0.weight' contains NaN"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rankone

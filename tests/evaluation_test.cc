// Edit evaluation and the discriminator. Tests that need the bundled face model skip when it has
// not been fetched (`rankone fetch dcgan-celeba32` with RANKONE_MODELS set).
#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/discriminator.h"
#include "rankone/models/model_store.h"
#include "rankone/rewriting/evaluation.h"
#include "rankone/rewriting/patch.h"
#include "rankone/rewriting/request.h"
#include "rankone/rewriting/rewriter.h"
#include "rewriting/evaluation_report.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>
#include <fstream>
#include <memory>

namespace rankone {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kModel[] = "dcgan-celeba32";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The bundled face model, or nullptr when its weights have not been fetched.
std::unique_ptr<Generator> face_model() {
  try {
    return load_generator(kModel);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kNotFound) return nullptr;
    throw;
  }
}

std::string discriminator_path() {
  try {
    return resolve_card_file(resolve_model_path(kModel), "discriminator.pt");
  } catch (const Error&) {
    return "";
  }
}

#define REQUIRE_FACE_MODEL(variable)                                                        \
  std::unique_ptr<Generator> variable = face_model();                                      \
  if (!variable) GTEST_SKIP() << "the dcgan-celeba32 weights are not fetched (set RANKONE_MODELS and run " \
                                 "`rankone fetch dcgan-celeba32`)"

// The bundled sunglasses request solved by `rankone edit` (layer 3, direct solver, statistics of
// 1000 samples), stored so that each test does not solve it again.
std::string sunglasses_patch(Generator& generator) {
  std::string path = testing::test_data_dir() + "/sunglasses_patch.safetensors";
  PatchStack stack(generator);
  stack.apply(load_patch(path));  // throws when the patch does not fit the fetched weights
  stack.revert_all();
  return path;
}

EvaluationSettings small_settings(int64_t count, int64_t chunk) {
  EvaluationSettings settings;
  for (int64_t i = 0; i < count; ++i) settings.samples.push_back(i);
  settings.samples_text = "0-" + std::to_string(count - 1);
  settings.chunk_size = chunk;
  settings.grid_samples = 4;
  return settings;
}

TEST(Evaluation, RelativeResponseIsNormOfProjection) {
  at::manual_seed(0);
  EvaluatedPatch patch;
  patch.patch.d = std::get<0>(at::linalg_qr(at::randn({6, 2}))).t().contiguous();  // [2, 6], orthonormal rows
  patch.context_response = 2.0;
  at::Tensor keys = at::randn({3, 6, 4, 5});

  at::Tensor response = relative_response(keys, patch);
  ASSERT_EQ(response.sizes(), at::IntArrayRef({3, 4, 5}));
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t y = 0; y < 4; ++y) {
      for (int64_t x = 0; x < 5; ++x) {
        at::Tensor k = keys.index({b, at::indexing::Slice(), y, x});
        double expected = at::matmul(patch.patch.d, k).norm().item<double>() / 2.0;
        EXPECT_NEAR(response[b][y][x].item<double>(), expected, 1e-5);
      }
    }
  }
}

TEST(Evaluation, HistogramDrawsBarsTicksAndMarker) {
  // Three values fall in the first of 4 bins and one in the last, with the marker in the middle.
  evaluation::HistogramFigure figure =
      evaluation::draw_histogram({{0.1, 0.2, 0.2, 3.9}}, 0.0, 4.0, 4, {{{0, 0, 255}}}, 2.0);
  const Image& image = figure.image;
  ASSERT_EQ(figure.x_ticks.size(), 5u);
  EXPECT_EQ(figure.x_ticks.front().second, "0");
  EXPECT_EQ(figure.x_ticks.back().second, "4");
  ASSERT_EQ(figure.y_ticks.size(), 5u);  // 1, 2, 3, 4 (the tallest bar, 3, rounded up) and 0
  EXPECT_EQ(figure.y_ticks[2].second, "3");
  EXPECT_EQ(figure.y_ticks[3].second, "4");
  EXPECT_EQ(figure.y_ticks[4].second, "0");

  auto is_blue = [&](int x, int y) {
    const uint8_t* p = image.at(x, y);
    return p[0] == 0 && p[1] == 0 && p[2] == 255;
  };
  int first_bin_x = figure.x_ticks[0].first + 20, last_bin_x = figure.x_ticks[4].first - 20;
  int axis_y = figure.y_ticks[4].first, three_y = figure.y_ticks[2].first, one_y = figure.y_ticks[0].first;
  EXPECT_TRUE(is_blue(first_bin_x, three_y + 2));
  EXPECT_FALSE(is_blue(first_bin_x, three_y - 3));
  EXPECT_TRUE(is_blue(last_bin_x, one_y + 2));
  EXPECT_FALSE(is_blue(last_bin_x, one_y - 3));
  EXPECT_FALSE(is_blue(figure.x_ticks[1].first + 20, axis_y - 2));  // empty bin

  const uint8_t* marker = image.at(figure.x_ticks[2].first, figure.y_ticks[3].first + 1);
  EXPECT_EQ(marker[0], 214);  // red dashes at 2.0
}

TEST(Evaluation, ReportOnSunglassesEdit) {
  REQUIRE_FACE_MODEL(generator);
  std::string patch = sunglasses_patch(*generator);
  std::string critic_path = discriminator_path();
  std::unique_ptr<Discriminator> critic;
  if (!critic_path.empty()) critic = std::make_unique<Discriminator>(Discriminator::load(critic_path));
  at::Tensor weight_before = generator->weight(3);

  std::string out = testing::temp_dir() + "/report";
  EvaluationResult result = evaluate_edit(*generator, {patch}, critic.get(), small_settings(32, 16), out);
  EXPECT_TRUE(at::equal(generator->weight(3), weight_before)) << "the generator was left patched";

  for (const char* file : {"report.html", "report.json", "response_histogram.png", "most_changed.png",
                           "least_changed.png", "partial.safetensors"}) {
    EXPECT_TRUE(fs::exists(out + "/" + file)) << file;
  }
  const json& report = result.report;
  EXPECT_EQ(json::parse(read_text(out + "/report.json")), report);
  EXPECT_EQ(report["samples"]["count"], 32);
  double fraction = report["rule_applies"]["fraction"].get<double>();
  EXPECT_GT(fraction, 0.0);
  EXPECT_LE(fraction, 1.0);
  // The edit draws sunglasses where it applies and little elsewhere.
  EXPECT_GT(report["pixel_change"]["inside"].get<double>(), 2 * report["pixel_change"]["outside"].get<double>());
  EXPECT_NEAR(report["pixel_change"]["inside_8bit"].get<double>(),
              127.5 * report["pixel_change"]["inside"].get<double>(), 1e-9);
  EXPECT_EQ(report["most_changed"].size(), 4u);
  EXPECT_EQ(report["per_sample"]["max_response"].size(), 32u);

  std::string html = read_text(out + "/report.html");
  EXPECT_EQ(html.find("http://"), std::string::npos) << "the page must not load external assets";
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_NE(html.find("src=\"most_changed.png\""), std::string::npos);
  if (critic) {
    EXPECT_TRUE(fs::exists(out + "/discriminator_histogram.png"));
    EXPECT_TRUE(std::isfinite(report["discriminator"]["mean_logit_before"].get<double>()));
    EXPECT_TRUE(std::isfinite(report["discriminator"]["mean_logit_after"].get<double>()));
  } else {
    EXPECT_TRUE(report["discriminator"].is_null());
  }
}

TEST(Evaluation, ResumeAfterInterruptGivesSameResults) {
  REQUIRE_FACE_MODEL(generator);
  std::string patch = sunglasses_patch(*generator);
  EvaluationSettings settings = small_settings(24, 8);

  EvaluationResult whole = evaluate_edit(*generator, {patch}, nullptr, settings, testing::temp_dir() + "/whole");

  std::string out = testing::temp_dir() + "/interrupted";
  auto stop_at_once = [](const Progress&) { return false; };
  try {
    evaluate_edit(*generator, {patch}, nullptr, settings, out, stop_at_once);
    FAIL() << "the interruption was ignored";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConflict);
    EXPECT_NE(std::string(e.what()).find("interrupted after 8 of 24 samples"), std::string::npos) << e.what();
  }
  TensorFile partial = load_tensor_file(out + "/partial.safetensors");
  EXPECT_EQ(partial.get("done").sum().item<int64_t>(), 8);

  EvaluationResult resumed = evaluate_edit(*generator, {patch}, nullptr, settings, out);
  EXPECT_EQ(resumed.resumed, 8);
  EXPECT_TRUE(at::allclose(resumed.measures.max_response, whole.measures.max_response, 0, 1e-6));
  EXPECT_TRUE(at::allclose(resumed.measures.region_pixels, whole.measures.region_pixels, 0, 0));
  EXPECT_TRUE(at::allclose(resumed.measures.change_inside, whole.measures.change_inside, 0, 1e-6));
  EXPECT_TRUE(at::allclose(resumed.measures.change_outside, whole.measures.change_outside, 0, 1e-6));
  EXPECT_EQ(resumed.report["rule_applies"], whole.report["rule_applies"]);
}

TEST(Evaluation, PartialFromOtherSettingsRejected) {
  REQUIRE_FACE_MODEL(generator);
  std::string patch = sunglasses_patch(*generator);
  std::string out = testing::temp_dir() + "/report";
  EvaluationSettings settings = small_settings(8, 8);
  evaluate_edit(*generator, {patch}, nullptr, settings, out);

  settings.threshold = 0.75;
  try {
    evaluate_edit(*generator, {patch}, nullptr, settings, out);
    FAIL() << "partial results of another threshold were reused";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("other settings (threshold differ)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--restart"), std::string::npos) << e.what();
  }

  settings.restart = true;
  EvaluationResult result = evaluate_edit(*generator, {patch}, nullptr, settings, out);
  EXPECT_EQ(result.resumed, 0);
  EXPECT_EQ(result.report["threshold"], 0.75);
}

TEST(Evaluation, ZeroPatchChangesNothing) {
  REQUIRE_FACE_MODEL(generator);
  Patch patch = load_patch(sunglasses_patch(*generator));
  patch.lambda.zero_();
  std::string path = testing::temp_dir() + "/zero.safetensors";
  save_patch(path, patch);

  EvaluationResult result = evaluate_edit(*generator, {path}, nullptr, small_settings(8, 8), testing::temp_dir());
  EXPECT_EQ(result.measures.change_inside.abs().max().item<double>(), 0.0);
  EXPECT_EQ(result.measures.change_outside.abs().max().item<double>(), 0.0);
}

TEST(Evaluation, PatchWithoutRequestRejected) {
  REQUIRE_FACE_MODEL(generator);
  Patch patch = load_patch(sunglasses_patch(*generator));
  patch.request = json::object();
  std::string path = testing::temp_dir() + "/bare.safetensors";
  save_patch(path, patch);
  try {
    evaluate_edit(*generator, {path}, nullptr, small_settings(4, 4), testing::temp_dir());
    FAIL() << "accepted a patch without a request";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("contains no request"), std::string::npos) << e.what();
  }
}

TEST(Evaluation, SettingsValidated) {
  EvaluationSettings settings = small_settings(4, 4);
  settings.threshold = 0;
  EXPECT_THROW(settings.validate(), Error);
  settings = small_settings(4, 4);
  settings.chunk_size = 0;
  EXPECT_THROW(settings.validate(), Error);
  settings = small_settings(4, 4);
  settings.samples.clear();
  EXPECT_THROW(settings.validate(), Error);
}

// The discriminator's forward pass written out with unfold and matmul in float64, the way the
// architecture is documented, independent of at::conv2d and at::batch_norm.
at::Tensor naive_logits(const Discriminator& critic, const at::Tensor& images) {
  at::Tensor x = images.to(at::kDouble);
  for (const Discriminator::Block& block : critic.blocks()) {
    int64_t batch = x.size(0), out = block.weight.size(0), side = x.size(2) / 2;
    at::Tensor columns = at::im2col(x, {4, 4}, {1, 1}, {1, 1}, {2, 2});  // [B, C_in * 16, side * side]
    at::Tensor y = at::matmul(block.weight.to(at::kDouble).reshape({out, -1}), columns).reshape({batch, out, side, side});
    if (block.bias.defined()) y = y + block.bias.to(at::kDouble).view({1, -1, 1, 1});
    if (block.bn_weight.defined()) {
      auto channel = [](const at::Tensor& t) { return t.to(at::kDouble).view({1, -1, 1, 1}); };
      y = (y - channel(block.bn_mean)) / at::sqrt(channel(block.bn_var) + 1e-5) * channel(block.bn_weight) +
          channel(block.bn_bias);
    }
    x = at::where(y > 0, y, 0.2 * y);
  }
  return (at::matmul(x.flatten(1), critic.linear_weight().to(at::kDouble).t()) + critic.linear_bias().to(at::kDouble))
      .squeeze(1);
}

TEST(Evaluation, DiscriminatorMatchesNaiveForward) {
  std::string path = discriminator_path();
  if (path.empty()) GTEST_SKIP() << "discriminator.pt of dcgan-celeba32 is not fetched";
  Discriminator critic = Discriminator::load(path);
  EXPECT_EQ(critic.image_size(), 32);
  EXPECT_EQ(critic.blocks().size(), 4u);

  at::manual_seed(1);
  at::Tensor images = at::rand({5, 3, 32, 32}) * 2 - 1;
  at::Tensor logits = critic.logits(images);
  ASSERT_EQ(logits.sizes(), at::IntArrayRef({5}));
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
  EXPECT_TRUE(at::allclose(logits.to(at::kDouble), naive_logits(critic, images), 1e-4, 1e-4))
      << logits << naive_logits(critic, images);
}

// Without a PyTorch reference, the trained batch-norm statistics are the parity check: generated
// faces in [-1, 1] must reproduce, at every block, the running mean and variance that training
// recorded on the generator's images. A wrong input range, layer order or padding would not.
TEST(Evaluation, DiscriminatorSeesFacesAsInTraining) {
  REQUIRE_FACE_MODEL(generator);
  std::string path = discriminator_path();
  if (path.empty()) GTEST_SKIP() << "discriminator.pt of dcgan-celeba32 is not fetched";
  Discriminator critic = Discriminator::load(path);
  torch::NoGradGuard no_grad;
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < 256; ++i) indices.push_back(i);
  SamplingSettings sampling;
  at::Tensor faces = generator->generate(generator->latents(indices, sampling), sampling);

  at::Tensor x = faces;
  for (size_t b = 0; b < critic.blocks().size(); ++b) {
    SCOPED_TRACE("block " + std::to_string(b));
    const Discriminator::Block& block = critic.blocks()[b];
    at::Tensor y = at::conv2d(x, block.weight, block.bias, 2, 1);
    if (block.bn_weight.defined()) {
      double variance = y.var({0, 2, 3}).mean().item<double>(), trained = block.bn_var.mean().item<double>();
      EXPECT_NEAR(variance / trained, 1.0, 0.2) << variance << " vs " << trained;
      EXPECT_NEAR(y.mean({0, 2, 3}).mean().item<double>(), block.bn_mean.mean().item<double>(), 0.05);
      y = at::batch_norm(y, block.bn_weight, block.bn_bias, block.bn_mean, block.bn_var, false, 0, 1e-5, false);
    }
    x = at::leaky_relu(y, 0.2);
  }

  // A converged GAN's critic is near chance on the generator's faces.
  at::Tensor logits = critic.logits(faces);
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
  EXPECT_GT(logits.mean().item<double>(), -2.0);
  EXPECT_LT(logits.mean().item<double>(), 2.0);
  EXPECT_GT(logits.std().item<double>(), 0.01) << "the critic gives every face the same score";
}

TEST(Evaluation, DiscriminatorRejectsWrongShape) {
  std::string path = testing::temp_dir() + "/critic.safetensors";
  save_safetensors(path, {{"discriminator.0.0.weight", at::zeros({32, 3, 3, 3})},
                          {"discriminator.0.0.bias", at::zeros({32})}});
  try {
    Discriminator::load(path);
    FAIL() << "accepted a 3x3 kernel";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'discriminator.0.0.weight' has shape [32, 3, 3, 3], expected [32, 3, 4, 4]"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace rankone

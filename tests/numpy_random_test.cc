#include "rankone/formats/tensor_file.h"
#include "rankone/models/latents.h"
#include "rankone/models/numpy_random.h"
#include "test_support.h"

#include <gtest/gtest.h>
#include <cstring>
#include <torch/types.h>

namespace rankone {
namespace {

TEST(NumpyRandom, MatchesFixtureStreams) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  TensorFile streams = load_tensor_file(dir + "/streams.safetensors");

  for (uint32_t seed : {0u, 1u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    NumpyRandomState rng(seed);
    at::Tensor raw = streams.get("mt19937_seed" + std::to_string(seed) + "_uint32_first10_i64");
    for (int i = 0; i < 10; ++i) EXPECT_EQ(static_cast<int64_t>(rng.next_uint32()), raw[i].item<int64_t>()) << i;
  }

  NumpyRandomState seeded(1);
  at::Tensor state = streams.get("mt19937_seed1_state_after_seeding_i64");
  for (int i = 0; i < 624; ++i) ASSERT_EQ(static_cast<int64_t>(seeded.state()[i]), state[i].item<int64_t>()) << i;

  NumpyRandomState uniform(1);
  at::Tensor samples = streams.get("random_sample_seed1_first10_f64");
  for (int i = 0; i < 10; ++i) EXPECT_EQ(uniform.random_sample(), samples[i].item<double>()) << i;
}

TEST(NumpyRandom, GaussianStreamsBitExact) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  TensorFile streams = load_tensor_file(dir + "/streams.safetensors");
  struct Case {
    uint32_t seed;
    const char* f64;
    const char* f32;
  };
  for (const Case& c : {Case{1, "zds_stream_seed1_f64", "zds_stream_seed1_f32"},
                        Case{0, "noise_stream_seed0_f64", "noise_stream_seed0_f32"}}) {
    SCOPED_TRACE(c.f64);
    at::Tensor expected64 = streams.get(c.f64), expected32 = streams.get(c.f32);
    NumpyRandomState rng(c.seed);
    const double* e64 = expected64.data_ptr<double>();
    for (int64_t i = 0; i < expected64.numel(); ++i) ASSERT_EQ(rng.standard_normal(), e64[i]) << "index " << i;
    NumpyRandomState rng32(c.seed);
    std::vector<float> values = rng32.standard_normal_f32(expected32.numel());
    EXPECT_EQ(0, std::memcmp(values.data(), expected32.data_ptr<float>(), values.size() * sizeof(float)));
  }
}

TEST(Latents, ReferenceRowsMatchFixture) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  at::Tensor zds = load_tensor_file(dir + "/edit_layer6.safetensors").get("zds");
  SamplingSettings settings;
  settings.latents = "reference";
  SampleBatch batch = make_latents({0, 7, 199}, 64, LatentDistribution::kNormal, settings);
  EXPECT_TRUE(batch.z[0].equal(zds[0]));
  EXPECT_TRUE(batch.z[1].equal(zds[7]));
  EXPECT_TRUE(batch.z[2].equal(zds[199]));
}

TEST(Latents, BatchIndependent) {
  SamplingSettings settings;
  SampleBatch alone = make_latents({5}, 100, LatentDistribution::kUniform, settings);
  SampleBatch together = make_latents({3, 4, 5}, 100, LatentDistribution::kUniform, settings);
  EXPECT_TRUE(alone.z[0].equal(together.z[2]));
  EXPECT_LE(together.z.max().item<float>(), 1.0f);
  EXPECT_GE(together.z.min().item<float>(), -1.0f);
}

TEST(Latents, ParsesSampleLists) {
  EXPECT_EQ(parse_sample_indices("0-3"), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(parse_sample_indices("7,1,4-5"), (std::vector<int64_t>{7, 1, 4, 5}));
  struct Bad {
    const char* text;
    const char* message;
  };
  for (const Bad& bad : {Bad{"", "not a non-negative integer"}, Bad{"5-2", "runs backwards"},
                         Bad{"a", "not a non-negative integer"}, Bad{"0-99999999", "more than"},
                         Bad{"-3", "not a non-negative integer"}, Bad{"99999999999", "not a non-negative integer"}}) {
    SCOPED_TRACE(bad.text);
    try {
      parse_sample_indices(bad.text, 1000);
      ADD_FAILURE() << "expected an error";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(bad.message), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace rankone

#include "rankone/models/latents.h"

#include "rankone/error.h"
#include "rankone/models/numpy_random.h"

#include <algorithm>
#include <cstring>

namespace rankone {

LatentDistribution parse_latent_distribution(const std::string& name) {
  if (name == "normal") return LatentDistribution::kNormal;
  if (name == "uniform") return LatentDistribution::kUniform;
  throw invalid_input("unknown latent distribution '" + name + "': expected \"normal\" or \"uniform\"");
}

SampleBatch make_latents(const std::vector<int64_t>& indices, int64_t size, LatentDistribution distribution,
                         const SamplingSettings& settings) {
  for (int64_t index : indices) {
    if (index < 0 || index > 0xffffffffLL) {
      throw invalid_input("sample index " + std::to_string(index) + " is out of range: use 0 to 4294967295");
    }
  }
  SampleBatch batch;
  batch.indices = indices;
  batch.z = torch::empty({static_cast<int64_t>(indices.size()), size}, torch::kFloat32);
  float* out = batch.z.data_ptr<float>();

  if (settings.latents == "rankone") {
    for (size_t row = 0; row < indices.size(); ++row) {
      NumpyRandomState rng(static_cast<uint32_t>(indices[row]));
      std::vector<float> values = distribution == LatentDistribution::kNormal ? rng.standard_normal_f32(size)
                                                                               : rng.uniform_f32(size, -1.0, 1.0);
      std::memcpy(out + row * size, values.data(), sizeof(float) * size);
    }
    return batch;
  }

  if (settings.latents == "reference") {
    if (distribution != LatentDistribution::kNormal) {
      throw invalid_input("the reference latent stream is standard normal, but this model draws uniform latents: "
                          "use the \"rankone\" latent stream");
    }
    if (indices.empty()) return batch;
    int64_t max_index = *std::max_element(indices.begin(), indices.end());
    if (max_index >= 10000000 / std::max<int64_t>(size, 1)) {
      throw invalid_input("sample index " + std::to_string(max_index) +
                          " is too large for the reference latent stream, which is drawn sequentially: "
                          "use indices below " + std::to_string(10000000 / std::max<int64_t>(size, 1)));
    }
    NumpyRandomState rng(1);
    std::vector<float> stream = rng.standard_normal_f32((max_index + 1) * size);
    for (size_t row = 0; row < indices.size(); ++row) {
      std::memcpy(out + row * size, stream.data() + indices[row] * size, sizeof(float) * size);
    }
    return batch;
  }

  throw invalid_input("unknown latent stream '" + settings.latents + "': expected \"rankone\" or \"reference\"");
}

}  // namespace rankone

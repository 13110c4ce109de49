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

namespace rankone {

std::vector<int64_t> parse_sample_indices(const std::string& text, size_t max_count) {
  auto fail = [&](const std::string& why) {
    return invalid_input("invalid sample list '" + text + "': " + why +
                         " (write indices and inclusive ranges such as 0-63 or 1,4,10-12)");
  };
  auto parse_number = [&](const std::string& part) -> int64_t {
    if (part.empty() || part.size() > 10 || part.find_first_not_of("0123456789") != std::string::npos) {
      throw fail("'" + part + "' is not a non-negative integer");
    }
    int64_t value = std::stoll(part);
    if (value > 0xffffffffLL) throw fail(part + " is above the largest index 4294967295");
    return value;
  };

  std::vector<int64_t> indices;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t dash = item.find('-');
    int64_t first = parse_number(dash == std::string::npos ? item : item.substr(0, dash));
    int64_t last = dash == std::string::npos ? first : parse_number(item.substr(dash + 1));
    if (last < first) throw fail("range " + item + " runs backwards");
    if (static_cast<uint64_t>(last - first) + indices.size() >= max_count) {
      throw fail("more than " + std::to_string(max_count) + " samples");
    }
    for (int64_t i = first; i <= last; ++i) indices.push_back(i);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return indices;
}

}  // namespace rankone

// The four noise modes of StyleGAN2 sampling. The header rankone/models/stylegan2.h
// documents each stream.
#include "models/stylegan2_parts.h"
#include "models/stylegan2_noise.h"

#include "rankone/error.h"
#include "rankone/models/numpy_random.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

namespace rankone {

namespace stylegan2 {

uint32_t sample_noise_seed(int64_t index, int layer) {
  return static_cast<uint32_t>((static_cast<uint64_t>(index) * 64 + static_cast<uint64_t>(layer)) & 0xffffffffULL);
}

torch::Tensor reference_noise(int64_t batch, int64_t height, int64_t width) {
  // The prefix of RandomState(0)'s float32 normals, grown on demand and shared by all
  // generators, because every layer and every crop starts the stream afresh.
  static std::mutex mutex;
  static NumpyRandomState rng(0);
  static std::vector<float> values;

  int64_t count = batch * height * width;
  torch::Tensor noise = at::empty({batch, 1, height, width}, at::kFloat);
  std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<int64_t>(values.size()) < count) {
    std::vector<float> more = rng.standard_normal_f32(count - static_cast<int64_t>(values.size()));
    values.insert(values.end(), more.begin(), more.end());
  }
  std::memcpy(noise.data_ptr<float>(), values.data(), sizeof(float) * count);
  return noise;
}

}  // namespace stylegan2

StyleGAN2::NoiseMaps StyleGAN2::make_noise(const SampleBatch& batch, const std::string& mode) const {
  return make_noise_until(batch, mode, 1 + static_cast<int>(convs_.size()));
}

StyleGAN2::NoiseMaps StyleGAN2::make_noise_until(const SampleBatch& batch, const std::string& mode,
                                                 int last_layer) const {
  RECORD_FUNCTION("stylegan2::make_noise", std::vector<c10::IValue>());
  int64_t rows = batch.z.size(0);
  // Layers 2 ... last_layer are convs_[0 ... layer_count - 1]. In every mode a layer's noise
  // does not depend on the later layers (the reference stream restarts at every layer), so
  // stopping early leaves the earlier maps as make_noise draws them.
  const int64_t layer_count =
      std::clamp<int64_t>(last_layer - 1, 0, static_cast<int64_t>(convs_.size()));
  std::vector<const StyledConv*> convs;
  for (int64_t slot = 0; slot < layer_count; ++slot) convs.push_back(convs_[slot].get());
  NoiseMaps noise;

  if (mode == "zero") {
    for (const StyledConv* conv : convs) noise[conv->layer] = at::zeros({rows, 1, conv->value_size, conv->value_size});
    return noise;
  }

  if (mode == "stored") {
    if (!has_stored_noise_) {
      throw invalid_input(source_ + ": the checkpoint has no noise buffers (noises.noise_*), so noise mode "
                          "\"stored\" is unavailable: use \"sample\", \"reference\" or \"zero\"");
    }
    for (const StyledConv* conv : convs) {
      noise[conv->layer] = conv->stored_noise.expand({rows, 1, conv->value_size, conv->value_size});
    }
    return noise;
  }

  if (mode == "reference") {
    for (const StyledConv* conv : convs) {
      noise[conv->layer] = stylegan2::reference_noise(rows, conv->value_size, conv->value_size);
    }
    return noise;
  }

  if (mode == "sample") {
    if (!batch.indices.empty() && static_cast<int64_t>(batch.indices.size()) != rows) {
      throw invalid_input("the batch has " + std::to_string(rows) + " latents but " +
                          std::to_string(batch.indices.size()) + " sample indices: give one index per row");
    }
    for (const StyledConv* conv : convs) {
      noise[conv->layer] = at::zeros({rows, 1, conv->value_size, conv->value_size});
    }

    // One task per (row, layer), each drawing from its own seeded stream.
    std::vector<float*> outputs;
    for (const StyledConv* conv : convs) outputs.push_back(noise[conv->layer].data_ptr<float>());
    at::parallel_for(0, rows * layer_count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        int64_t row = task / layer_count;
        int64_t layer_slot = task % layer_count;
        int64_t index = batch.indices.empty() ? -1 : batch.indices[row];
        if (index < 0) continue;  // latents from a file: no sample stream, zero noise

        const StyledConv& conv = *convs[layer_slot];
        int64_t pixels = conv.value_size * conv.value_size;
        NumpyRandomState rng(stylegan2::sample_noise_seed(index, conv.layer));
        std::vector<float> values = rng.standard_normal_f32(pixels);
        std::memcpy(outputs[layer_slot] + row * pixels, values.data(), sizeof(float) * pixels);
      }
    });
    return noise;
  }

  throw invalid_input("unknown noise mode '" + mode +
                      "': expected \"sample\", \"stored\", \"reference\" or \"zero\"");
}

}  // namespace rankone

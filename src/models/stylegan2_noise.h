// Noise streams of StyleGAN2 sampling.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace rankone::stylegan2 {

/// Seed of the "sample" noise of sample `index` at `layer`: (64 * index + layer) mod 2^32.
uint32_t sample_noise_seed(int64_t index, int layer);

/// The reference tool's noise for a batch: the first batch * height * width values of
/// numpy RandomState(0).randn as float32, viewed as [batch, 1, height, width].
torch::Tensor reference_noise(int64_t batch, int64_t height, int64_t width);

}  // namespace rankone::stylegan2

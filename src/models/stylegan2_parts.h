// The parameter groups of a StyleGAN2 network and the operations that run them.
#pragma once

#include "rankone/models/stylegan2.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace rankone {

/// Equalised-learning-rate linear layer with its runtime scales folded in.
struct StyleGAN2::EqualLinear {
  torch::Tensor weight_t;  // [in, out]: stored weight * lr_multiplier / sqrt(in), transposed
  torch::Tensor bias;      // [out]: stored bias * lr_multiplier

  torch::Tensor apply(const torch::Tensor& x) const { return at::addmm(bias, x, weight_t); }
};

/// One styled convolution: modulation, 3x3 convolution (transposed with stride 2 on
/// upsampling layers), demodulation, noise, bias and activation.
struct StyleGAN2::StyledConv {
  int layer = 0;            // user-facing number: 2 for conv1, N for convs.(N-3)
  std::string name;         // rosinality module name: "conv1" or "convs.j"
  bool upsample = false;
  int64_t in_channels = 0, out_channels = 0;
  int64_t key_size = 0, value_size = 0;
  EqualLinear modulation;   // w -> style [B, in_channels]
  torch::Tensor weight;     // [out, in, 3, 3]: the stored weight, or the one set_weight gave
  torch::Tensor conv_weight;   // prepare_conv_weight(weight, upsample)
  torch::Tensor demod_weight;  // prepare_demod_weight(weight)
  double noise_strength = 0.0;
  torch::Tensor activation_bias;  // [out]
  torch::Tensor stored_noise;     // [1, 1, R, R], undefined when the file has no noise buffers
};

/// The toRGB branch after a resolution: a modulated 1x1 convolution without demodulation.
struct StyleGAN2::ToRGB {
  int after_layer = 0;     // runs after this layer (2, 4, 6, ...)
  std::string name;        // "to_rgb1" or "to_rgbs.i"
  EqualLinear modulation;  // w -> style [B, C]
  torch::Tensor weight;    // [3, C]: stored weight / sqrt(C)
  torch::Tensor bias;      // [3]
};

namespace stylegan2 {

/// The weight in the layout the convolution takes, with the equalised-lr scale 1/sqrt(C_in * 9)
/// folded in: [out, in, 3, 3], or [in, out, 3, 3] for the transposed convolution of
/// upsampling layers. Differentiable in `weight` [out, in, 3, 3].
torch::Tensor prepare_conv_weight(const torch::Tensor& weight, bool upsample);
/// [in, out]: sum over the kernel taps of (scale * weight)^2, so that the demodulation of
/// style s is rsqrt(s^2 @ demod_weight + 1e-8). Differentiable in `weight`.
torch::Tensor prepare_demod_weight(const torch::Tensor& weight);

/// Modulated, demodulated convolution of `key` (the input already multiplied by `style`):
/// 3x3 with padding 1, or on upsampling layers a stride-2 transposed convolution followed
/// by the [1,3,3,1] FIR blur, so [B, in, R, R] -> [B, out, 2R, 2R].
torch::Tensor modulated_conv(const torch::Tensor& key, const torch::Tensor& style, const torch::Tensor& conv_weight,
                             const torch::Tensor& demod_weight, bool upsample);

/// Adds strength * noise ([B, 1, H, W], may be undefined), then bias, then applies
/// LeakyReLU(0.2) * sqrt(2). In place when no gradient is recorded.
torch::Tensor add_noise_bias_activate(const torch::Tensor& y, const torch::Tensor& noise, double strength,
                                      const torch::Tensor& bias);

/// The skip upsampling of the running image: zero insertion by 2, then the [1,3,3,1] FIR
/// filter with gain 4 and padding (2, 1) ("upfirdn2d" of rosinality's port). [B, C, R, R] -> [B, C, 2R, 2R].
torch::Tensor upsample_fir(const torch::Tensor& x);

/// The blur after a transposed convolution: the [1,3,3,1] FIR filter with gain 4 and padding
/// (1, 1). [B, C, 2R + 1, 2R + 1] -> [B, C, 2R, 2R].
torch::Tensor blur_fir(const torch::Tensor& x);

}  // namespace stylegan2
}  // namespace rankone

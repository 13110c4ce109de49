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

/// Added to the modulated weight's squared norm before the inverse square root.
constexpr double kDemodEpsilon = 1e-8;

/// The weight in the layout the convolution takes, with the equalised-lr scale 1/sqrt(C_in * 9)
/// folded in: [out, in, 3, 3], or [in, out, 3, 3] for the transposed convolution of
/// upsampling layers. Differentiable in `weight` [out, in, 3, 3].
torch::Tensor prepare_conv_weight(const torch::Tensor& weight, bool upsample);
/// [in, out]: sum over the kernel taps of (scale * weight)^2, so that the demodulation of
/// style s is rsqrt(s^2 @ demod_weight + 1e-8). Differentiable in `weight`.
torch::Tensor prepare_demod_weight(const torch::Tensor& weight);

/// The convolution of `key` (the input already multiplied by the style) with the prepared
/// weight, before demodulation: 3x3 with padding 1, [B, in, R, R] -> [B, out, R, R], or on
/// upsampling layers the stride-2 transposed convolution, [B, in, R, R] -> [B, out, 2R+1, 2R+1].
torch::Tensor convolve(const torch::Tensor& key, const torch::Tensor& conv_weight, bool upsample);

/// Demodulation factors rsqrt(style^2 @ demod_weight + 1e-8): [B, out], one per output
/// channel, the inverse norm of that channel's modulated weight.
torch::Tensor demodulation(const torch::Tensor& style, const torch::Tensor& demod_weight);

/// The result of finish_layer: the layer output and, when a next style was given, the next
/// layer's key (output times that style). Either is undefined when not requested.
struct LayerOutput {
  torch::Tensor out;
  torch::Tensor next_key;
};

/// Everything after the convolution: demodulation, the FIR blur on upsampling layers, noise
/// (`noise` [B, 1, H, W] times `strength`, skipped when undefined), bias and
/// LeakyReLU(0.2) * sqrt(2). When `next_style` [B, C_out] is defined, also returns
/// output * next_style, the key of the next layer. `keep_output` false drops the output
/// itself when only the next key is needed.
/// Runs one fused pass per output when no gradient is recorded, else differentiable ATen ops.
LayerOutput finish_layer(const torch::Tensor& convolved, const torch::Tensor& demod, bool upsample,
                         const torch::Tensor& noise, double strength, const torch::Tensor& bias,
                         const torch::Tensor& next_style = {}, bool keep_output = true);

/// The toRGB convolution: a 1x1 convolution of `x` [B, C, H, W] with the modulated weight
/// [B, 3, C] (no demodulation), plus `bias` [3] and the running image `skip` [B, 3, H, W]
/// when defined. Returns [B, 3, H, W].
torch::Tensor to_rgb(const torch::Tensor& x, const torch::Tensor& modulated_weight, const torch::Tensor& bias,
                     const torch::Tensor& skip);

/// The blur after a transposed convolution with ATen ops (differentiable): the [1,3,3,1]
/// FIR filter with gain 4 and padding (1, 1), [B, C, 2R + 1, 2R + 1] -> [B, C, 2R, 2R].
torch::Tensor blur_fir(const torch::Tensor& x);

/// The skip upsampling of the running image: zero insertion by 2, then the [1,3,3,1] FIR
/// filter with gain 4 and padding (2, 1) ("upfirdn2d" of rosinality's port).
/// [B, C, R, R] -> [B, C, 2R, 2R]. Differentiable when the input requires a gradient.
torch::Tensor upsample_fir(const torch::Tensor& x);

}  // namespace stylegan2
}  // namespace rankone

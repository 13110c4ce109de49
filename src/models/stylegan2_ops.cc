// Convolutions, FIR filters and the fused activation of StyleGAN2, as rosinality's port
// computes them (modulation applied to the input, demodulation to the output).
#include "models/stylegan2_parts.h"

#include <cmath>

namespace rankone::stylegan2 {

namespace {

constexpr double kLeakySlope = 0.2;
constexpr double kDemodEpsilon = 1e-8;

// outer([1,3,3,1]) / 64 * 4: the blur kernel with gain 4 (one zero-inserted pixel in four
// carries signal), as a depthwise weight [channels, 1, 4, 4].
torch::Tensor fir_kernel(int64_t channels, const torch::Tensor& like) {
  static const float taps[4] = {1.f, 3.f, 3.f, 1.f};
  torch::Tensor kernel = at::empty({4, 4}, like.options());
  float* data = kernel.data_ptr<float>();
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) data[y * 4 + x] = taps[y] * taps[x] / 16.f;
  }
  return kernel.view({1, 1, 4, 4}).expand({channels, 1, 4, 4}).contiguous();
}

double conv_scale(const torch::Tensor& weight) {
  return 1.0 / std::sqrt(static_cast<double>(weight.size(1) * weight.size(2) * weight.size(3)));
}

}  // namespace

torch::Tensor prepare_conv_weight(const torch::Tensor& weight, bool upsample) {
  torch::Tensor scaled = weight * conv_scale(weight);
  if (upsample) return scaled.transpose(0, 1).contiguous();
  return scaled.contiguous();
}

torch::Tensor prepare_demod_weight(const torch::Tensor& weight) {
  torch::Tensor scaled = weight * conv_scale(weight);
  return scaled.square().sum({2, 3}).t().contiguous();
}

torch::Tensor modulated_conv(const torch::Tensor& key, const torch::Tensor& style, const torch::Tensor& conv_weight,
                             const torch::Tensor& demod_weight, bool upsample) {
  torch::Tensor y = upsample ? at::conv_transpose2d(key, conv_weight, {}, /*stride=*/2, /*padding=*/0)
                             : at::conv2d(key, conv_weight, {}, /*stride=*/1, /*padding=*/1);

  // Demodulation: divide each output channel by the norm of its modulated weight.
  torch::Tensor demod = at::rsqrt(at::mm(style.square(), demod_weight) + kDemodEpsilon);
  y = y * demod.view({demod.size(0), demod.size(1), 1, 1});

  if (upsample) y = blur_fir(y);
  return y;
}

torch::Tensor add_noise_bias_activate(const torch::Tensor& y, const torch::Tensor& noise, double strength,
                                      const torch::Tensor& bias) {
  torch::Tensor bias_map = bias.view({1, -1, 1, 1});
  bool in_place = !(at::GradMode::is_enabled() && (y.requires_grad() || bias.requires_grad()));
  if (in_place) {
    torch::Tensor out = y;
    if (noise.defined()) out.add_(noise, strength);
    out.add_(bias_map);
    at::leaky_relu_(out, kLeakySlope);
    return out.mul_(std::sqrt(2.0));
  }
  torch::Tensor out = noise.defined() ? y + noise * strength : y;
  return at::leaky_relu(out + bias_map, kLeakySlope) * std::sqrt(2.0);
}

torch::Tensor upsample_fir(const torch::Tensor& x) {
  // Zero insertion, padding (2, 1) and the 4-tap filter equal a depthwise transposed
  // convolution with stride 2 and padding 1 (the kernel is symmetric, so no flip).
  int64_t channels = x.size(1);
  return at::conv_transpose2d(x, fir_kernel(channels, x), {}, /*stride=*/2, /*padding=*/1, /*output_padding=*/0,
                              /*groups=*/channels);
}

torch::Tensor blur_fir(const torch::Tensor& x) {
  int64_t channels = x.size(1);
  return at::conv2d(x, fir_kernel(channels, x), {}, /*stride=*/1, /*padding=*/1, /*dilation=*/1, /*groups=*/channels);
}

}  // namespace rankone::stylegan2

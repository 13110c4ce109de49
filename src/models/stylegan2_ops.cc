// Convolutions, FIR filters and the fused activation of StyleGAN2, as rosinality's port
// computes them with the modulation applied to the input and the demodulation to the output.
#include "models/scratch_pool.h"
#include "models/stylegan2_kernels.h"
#include "models/stylegan2_parts.h"

#include <ATen/record_function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>

namespace rankone::stylegan2 {

namespace {

constexpr double kLeakySlope = 0.2;

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

bool records_gradient(std::initializer_list<const torch::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const torch::Tensor* tensor : tensors) {
    if (tensor->defined() && tensor->requires_grad()) return true;
  }
  return false;
}

// finish_layer with differentiable ATen ops, in the reference's order of operations.
LayerOutput finish_layer_aten(const torch::Tensor& convolved, const torch::Tensor& demod, bool upsample,
                              const torch::Tensor& noise, double strength, const torch::Tensor& bias,
                              const torch::Tensor& next_style) {
  torch::Tensor y = convolved * demod.view({demod.size(0), demod.size(1), 1, 1});
  if (upsample) y = blur_fir(y);
  if (noise.defined()) y = y + noise * strength;
  LayerOutput result;
  result.out = at::leaky_relu(y + bias.view({1, -1, 1, 1}), kLeakySlope) * std::sqrt(2.0);
  if (next_style.defined()) result.next_key = result.out * next_style.view({next_style.size(0), -1, 1, 1});
  return result;
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

namespace {

// The stride-2 transposed convolution as four ordinary convolutions, one per output phase.
// Output row 2t takes kernel rows 2 and 0 over input rows t - 1 and t, and row 2t + 1 takes
// kernel row 1 over input row t. Columns split the same way. libtorch 1.13 runs the four through
// oneDNN, while its transposed convolution is a GEMM per sample plus col2im.
torch::Tensor transposed_by_phases(const torch::Tensor& key, const torch::Tensor& conv_weight) {
  torch::Tensor weight = conv_weight.transpose(0, 1);  // [out, in, 3, 3]
  int64_t batch = key.size(0), height = key.size(2), width = key.size(3);
  torch::Tensor out = at::empty({batch, weight.size(0), 2 * height + 1, 2 * width + 1}, key.options());
  // Even output rows (or columns) use taps {2, 0} with padding 1, odd ones tap 1 without padding.
  torch::Tensor row_taps[2] = {at::stack({weight.select(2, 2), weight.select(2, 0)}, 2), weight.narrow(2, 1, 1)};
  const int64_t padding[2] = {1, 0};
  for (int row = 0; row < 2; ++row) {
    for (int column = 0; column < 2; ++column) {
      const torch::Tensor& taps = row_taps[row];
      torch::Tensor kernel = column == 0 ? at::stack({taps.select(3, 2), taps.select(3, 0)}, 3) : taps.narrow(3, 1, 1);
      torch::Tensor phase = at::conv2d(key, kernel.contiguous(), {}, /*stride=*/1, {padding[row], padding[column]});
      out.slice(2, row, 2 * height + 1, 2).slice(3, column, 2 * width + 1, 2).copy_(phase);
    }
  }
  return out;
}

}  // namespace

torch::Tensor convolve(const torch::Tensor& key, const torch::Tensor& conv_weight, bool upsample) {
  if (!upsample) return at::conv2d(key, conv_weight, {}, /*stride=*/1, /*padding=*/1);
  // Measured on a 2-core AMD EPYC for the layer shapes of a 256x256 config-f network. The phase
  // split was 1.4x to 2.5x faster for one image from 16x16 to 128x128 inputs and for batches of
  // up to 4096 input pixels in all. It was 0.6x for one 4x4 input, and whole 8-image batches ran
  // up to 1.2x slower with it on larger maps.
  int64_t pixels = key.size(0) * key.size(2) * key.size(3);
  bool phases_faster = pixels > 16 && (key.size(0) == 1 || pixels <= 4096);
  if (!phases_faster || records_gradient({&key, &conv_weight})) {
    return at::conv_transpose2d(key, conv_weight, {}, /*stride=*/2, /*padding=*/0);
  }
  return transposed_by_phases(key, conv_weight);
}

torch::Tensor demodulation(const torch::Tensor& style, const torch::Tensor& demod_weight) {
  return at::rsqrt(at::mm(style.square(), demod_weight) + kDemodEpsilon);
}

LayerOutput finish_layer(const torch::Tensor& convolved, const torch::Tensor& demod, bool upsample,
                         const torch::Tensor& noise, double strength, const torch::Tensor& bias,
                         const torch::Tensor& next_style, bool keep_output) {
  RECORD_FUNCTION("stylegan2::finish_layer", std::vector<c10::IValue>({convolved}));
  if (records_gradient({&convolved, &demod, &noise, &bias, &next_style})) {
    return finish_layer_aten(convolved, demod, upsample, noise, strength, bias, next_style);
  }

  int64_t batch = convolved.size(0), channels = convolved.size(1);
  int64_t height = convolved.size(2) - (upsample ? 1 : 0), width = convolved.size(3) - (upsample ? 1 : 0);
  torch::Tensor conv = convolved.contiguous();
  torch::Tensor demod_values = demod.contiguous();
  torch::Tensor bias_values = bias.contiguous();
  torch::Tensor noise_values = noise.defined() ? noise.expand({batch, 1, height, width}).contiguous() : noise;
  torch::Tensor style_values = next_style.defined() ? next_style.contiguous() : next_style;

  LayerOutput result;
  kernels::Epilogue epilogue;
  epilogue.demod = demod_values.data_ptr<float>();
  epilogue.noise = noise_values.defined() ? noise_values.data_ptr<float>() : nullptr;
  epilogue.strength = static_cast<float>(strength);
  epilogue.bias = bias_values.data_ptr<float>();
  if (keep_output || !next_style.defined()) {
    // Without the blur the output can overwrite the convolution result.
    result.out = upsample ? scratch_empty({batch, channels, height, width}) : conv;
    epilogue.out = result.out.data_ptr<float>();
  }
  if (next_style.defined()) {
    result.next_key = scratch_empty({batch, channels, height, width});
    epilogue.next_style = style_values.data_ptr<float>();
    epilogue.next_key = result.next_key.data_ptr<float>();
  }

  if (upsample) {
    kernels::finish_blurred(conv.data_ptr<float>(), batch, channels, height, width, epilogue);
  } else {
    kernels::finish_plain(conv.data_ptr<float>(), batch, channels, height, width, epilogue);
  }
  return result;
}

torch::Tensor to_rgb(const torch::Tensor& x, const torch::Tensor& modulated_weight, const torch::Tensor& bias,
                     const torch::Tensor& skip) {
  RECORD_FUNCTION("stylegan2::to_rgb", std::vector<c10::IValue>({x}));
  int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  if (records_gradient({&x, &modulated_weight, &bias, &skip})) {
    // One matrix product per sample: [3, C] times the feature map [C, H * W].
    torch::Tensor rgb = at::bmm(modulated_weight, x.reshape({batch, channels, height * width}));
    rgb = rgb.view({batch, 3, height, width}) + bias.view({1, 3, 1, 1});
    return skip.defined() ? rgb + skip : rgb;
  }

  torch::Tensor input = x.contiguous();
  torch::Tensor weight = modulated_weight.contiguous();
  torch::Tensor bias_values = bias.contiguous();
  torch::Tensor skip_values = skip.defined() ? skip.expand({batch, 3, height, width}).contiguous() : skip;
  torch::Tensor out = at::empty({batch, 3, height, width}, input.options());
  kernels::to_rgb(input.data_ptr<float>(), batch, channels, height * width, weight.data_ptr<float>(),
                  bias_values.data_ptr<float>(), skip_values.defined() ? skip_values.data_ptr<float>() : nullptr,
                  out.data_ptr<float>());
  return out;
}

torch::Tensor blur_fir(const torch::Tensor& x) {
  int64_t channels = x.size(1);
  return at::conv2d(x, fir_kernel(channels, x), {}, /*stride=*/1, /*padding=*/1, /*dilation=*/1, /*groups=*/channels);
}

torch::Tensor upsample_fir(const torch::Tensor& x) {
  RECORD_FUNCTION("stylegan2::upsample_fir", std::vector<c10::IValue>({x}));
  if (records_gradient({&x}) || x.size(2) != x.size(3)) {
    // Zero insertion, padding (2, 1) and the 4-tap filter equal a depthwise transposed
    // convolution with stride 2 and padding 1 (the kernel is symmetric, so no flip).
    int64_t channels = x.size(1);
    return at::conv_transpose2d(x, fir_kernel(channels, x), {}, /*stride=*/2, /*padding=*/1, /*output_padding=*/0,
                                /*groups=*/channels);
  }
  torch::Tensor input = x.contiguous();
  int64_t size = input.size(2);
  torch::Tensor out = at::empty({input.size(0), input.size(1), 2 * size, 2 * size}, input.options());
  kernels::upsample_planes(input.data_ptr<float>(), input.size(0) * input.size(1), size, out.data_ptr<float>());
  return out;
}

}  // namespace rankone::stylegan2

// A rewritable layer's output written out as an explicit function of Lambda, for the
// rank-r update W = W0 + einsum(Lambda, D) of the rewriting method. Once the projected key
// has been convolved with one-hot kernels, every value and Jacobian of the layer output
// costs a few small matrix products instead of a pass through the convolution.
//
// With m = r * k * k unknowns per output channel (Lambda[o] flattened in (r, ky, kx) order)
// and P output pixels:
//
//   pre[o, p]  = base[o, p] + sum_j Lambda[o, j] * columns[j, p]
//   scale[o]   = 1, or on demodulated layers
//                rsqrt(norm[o] + 2 cross[o] . Lambda[o] + Lambda[o]^T quad Lambda[o] + epsilon)
//   z[o, p]    = gain[o] * scale[o] * pre[o, p] + shift[o, p]
//   out[o, p]  = activation(z[o, p])
//
// The first line is exact because a convolution is linear in its weight and the delta factors
// through the r projected key channels. The second is exact because StyleGAN2's demodulation
// divides each output channel by the norm of its own modulated weight, a quadratic in Lambda[o].
#pragma once

#include <torch/types.h>

namespace rankone {

struct LayerExpansion {
  enum class Activation { kIdentity, kLeakyReLU, kTanh };

  torch::Tensor base;     // [O, P]: the linear part of the layer with W0
  torch::Tensor columns;  // [m, P]: the linear part's response to each unit of Lambda[o]
  torch::Tensor gain;     // [O]
  torch::Tensor shift;    // [O, P]
  bool demodulated = false;
  torch::Tensor norm;     // [O]: squared norm of the modulated W0 per output channel (demodulated only)
  torch::Tensor cross;    // [O, m] (demodulated only)
  torch::Tensor quad;     // [m, m], shared by every output channel (demodulated only)
  double epsilon = 0;
  Activation activation = Activation::kIdentity;
  double slope = 1;     // negative-side slope of the leaky ReLU (0 for a plain ReLU)
  double out_gain = 1;  // factor after the activation (StyleGAN2: sqrt(2))

  int64_t channels() const { return base.size(0); }
  int64_t pixels() const { return base.size(1); }
  int64_t unknowns() const { return columns.size(0); }
};

/// Layer output [O, P] for Lambda [O, m] (or [O, r, k, k]), float32.
torch::Tensor expansion_output(const LayerExpansion& expansion, const torch::Tensor& lambda);

/// Jacobian blocks [O, P, m] of the output with respect to Lambda: output channel o depends on
/// Lambda[o] alone, so the full Jacobian is block diagonal with these blocks.
torch::Tensor expansion_jacobian(const LayerExpansion& expansion, const torch::Tensor& lambda);

/// The one-hot kernels that turn a convolution of the projected key [B, r, H, W] into the
/// expansion's columns: [m, r, k, k] in canonical layout, row j = (r, ky, kx) flattened.
torch::Tensor one_hot_kernels(int64_t rank, int64_t kernel_size);

/// Flattens a per-channel map [B, C, H, W] to [C, B * H * W], the expansion's pixel order.
torch::Tensor flatten_channels(const torch::Tensor& map);

}  // namespace rankone

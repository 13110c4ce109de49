#include "rankone/models/layer_expansion.h"

#include <ATen/ATen.h>

namespace rankone {

namespace {

struct Forward {
  at::Tensor pre, scale, z;  // [O, P], [O] (undefined without demodulation), [O, P]
};

Forward run_forward(const LayerExpansion& e, const at::Tensor& lambda) {
  Forward f;
  f.pre = at::addmm(e.base, lambda, e.columns);
  at::Tensor factor = e.gain;
  if (e.demodulated) {
    at::Tensor squared = e.norm + 2 * (e.cross * lambda).sum(1) + (at::mm(lambda, e.quad) * lambda).sum(1);
    f.scale = at::rsqrt(squared + e.epsilon);
    factor = factor * f.scale;
  }
  f.z = f.pre * factor.unsqueeze(1) + e.shift;
  return f;
}

}  // namespace

torch::Tensor expansion_output(const LayerExpansion& e, const torch::Tensor& lambda) {
  at::Tensor z = run_forward(e, lambda.reshape({e.channels(), e.unknowns()})).z;
  switch (e.activation) {
    case LayerExpansion::Activation::kLeakyReLU: return at::leaky_relu(z, e.slope) * e.out_gain;
    case LayerExpansion::Activation::kTanh: return at::tanh(z) * e.out_gain;
    case LayerExpansion::Activation::kIdentity: break;
  }
  return e.out_gain == 1 ? z : z * e.out_gain;
}

torch::Tensor expansion_jacobian(const LayerExpansion& e, const torch::Tensor& lambda_any) {
  at::Tensor lambda = lambda_any.reshape({e.channels(), e.unknowns()});
  Forward f = run_forward(e, lambda);

  // d out / d z per pixel [O, P].
  at::Tensor slope;
  switch (e.activation) {
    case LayerExpansion::Activation::kLeakyReLU:
      slope = at::where(f.z > 0, at::full({}, e.out_gain, f.z.options()), at::full({}, e.slope * e.out_gain, f.z.options()));
      break;
    case LayerExpansion::Activation::kTanh:
      slope = (1 - at::tanh(f.z).square()) * e.out_gain;
      break;
    case LayerExpansion::Activation::kIdentity:
      slope = at::full_like(f.z, e.out_gain);
      break;
  }

  // d z[o, p] / d Lambda[o, j] = gain[o] * (scale[o] * columns[j, p] + pre[o, p] * d scale[o] / d Lambda[o, j]),
  // where d scale / d Lambda[o] = -scale^3 * (cross[o] + quad Lambda[o]) on demodulated layers.
  at::Tensor outer = slope * e.gain.unsqueeze(1);  // [O, P]
  at::Tensor linear_factor = e.demodulated ? outer * f.scale.unsqueeze(1) : outer;
  at::Tensor jacobian = linear_factor.unsqueeze(2) * e.columns.t().unsqueeze(0);  // [O, P, m]
  if (e.demodulated) {
    at::Tensor scale_gradient = -f.scale.pow(3).unsqueeze(1) * (e.cross + at::mm(lambda, e.quad));  // [O, m]
    jacobian = jacobian + (outer * f.pre).unsqueeze(2) * scale_gradient.unsqueeze(1);
  }
  return jacobian;
}

torch::Tensor one_hot_kernels(int64_t rank, int64_t kernel_size) {
  int64_t unknowns = rank * kernel_size * kernel_size;
  return at::eye(unknowns, at::kFloat).view({unknowns, rank, kernel_size, kernel_size});
}

torch::Tensor flatten_channels(const torch::Tensor& map) { return map.transpose(0, 1).reshape({map.size(1), -1}); }

}  // namespace rankone

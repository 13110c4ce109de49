// The solvers behind solve_edit: the reference Adam optimiser, Adam on Lambda,
// and the direct solver (iteratively reweighted Gauss-Newton over Lambda).
#include "rankone/error.h"
#include "rankone/rewriting/rewriter.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cmath>

namespace rankone {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

void report(const ProgressCallback& progress, long done, long total, double loss, Clock::time_point start) {
  if (progress && !progress({"solve", done, total, loss, seconds_since(start)})) {
    throw Error(ErrorKind::kConflict, "edit cancelled");
  }
}

at::Tensor l1(const at::Tensor& output, const at::Tensor& goal) { return (output - goal).abs().mean(); }

// The reference optimiser: Adam on the whole weight with the L1 goal loss; after the step of
// iteration `it`, when it % piter == 0 or it is the last, the weight is projected back to
// W0 + span(D) along the input-channel axis. The loss of an iteration is taken before its step.
void solve_adam_weight(const Generator& g, int layer, const Goal& goal, const at::Tensor& d,
                       const SolverSettings& settings, EditResult& result, const ProgressCallback& progress,
                       Clock::time_point start) {
  at::Tensor w0 = result.weight_before;
  at::Tensor w0_orthogonal = w0 - project_on_directions(w0, d);
  at::Tensor weight = w0.clone().requires_grad_(true);
  torch::optim::Adam optimizer({weight}, torch::optim::AdamOptions(settings.lr));
  for (int it = 0; it < settings.steps; ++it) {
    at::Tensor loss = l1(g.run_target(layer, goal.inputs, weight), goal.values);
    result.losses.push_back(loss.item<double>());
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (it % settings.piter == 0 || it == settings.steps - 1) {
      torch::NoGradGuard no_grad;
      weight.copy_(w0_orthogonal + project_on_directions(weight, d));
    }
    report(progress, it + 1, settings.steps, result.losses.back(), start);
  }
  result.lambda = lambda_of(weight.detach() - w0, d);
}

// Adam on Lambda itself: W = W0 + Lambda D stays in the subspace at every step.
void solve_adam_lambda(const Generator& g, int layer, const Goal& goal, const at::Tensor& d,
                       const SolverSettings& settings, EditResult& result, const ProgressCallback& progress,
                       Clock::time_point start) {
  at::Tensor w0 = result.weight_before;
  at::Tensor lambda = at::zeros({w0.size(0), d.size(0), w0.size(2), w0.size(3)}).requires_grad_(true);
  torch::optim::Adam optimizer({lambda}, torch::optim::AdamOptions(settings.lr));
  for (int it = 0; it < settings.steps; ++it) {
    at::Tensor loss = l1(g.run_target(layer, goal.inputs, w0 + delta_of(lambda, d)), goal.values);
    result.losses.push_back(loss.item<double>());
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    report(progress, it + 1, settings.steps, result.losses.back(), start);
  }
  result.lambda = lambda.detach();
}

// [B, C, H, W] -> [C, B*H*W].
at::Tensor per_channel(const at::Tensor& map) { return map.transpose(0, 1).reshape({map.size(1), -1}); }

// Sums of the absolute goal residual per output channel [C_out] for a weight.
at::Tensor channel_losses(const Generator& g, int layer, const Goal& goal, const at::Tensor& weight) {
  return (g.run_target(layer, goal.inputs, weight) - goal.values).abs().sum({0, 2, 3});
}

// The direct solver. Lambda has C_out x r x k x k entries, and a convolution's output channel o
// depends only on Lambda[o]. Demodulation keeps this, because it normalises each output channel
// by its own weights. So the Jacobian of the layer output with respect to Lambda is block
// diagonal with r*k*k columns per channel. The columns come from r*k*k Jacobian-vector
// products (double backward). Each iteration then solves one small weighted least-squares
// system per channel with weights 1/|residual| (iteratively reweighted least squares, whose
// fixed point minimises the L1 goal loss). Each channel keeps the best of a few step lengths (its loss is separable);
// when the layer couples channels (pixel norm), a global line search decides instead.
void solve_direct(const Generator& g, int layer, const Goal& goal, const at::Tensor& d, const SolverSettings& settings,
                  EditResult& result, const ProgressCallback& progress, Clock::time_point start) {
  at::Tensor w0 = result.weight_before;
  const int64_t out_channels = w0.size(0), rank = d.size(0), kh = w0.size(2), kw = w0.size(3);
  const int64_t unknowns = rank * kh * kw;
  // Iterations stop after two in a row with a fresh Jacobian that improve the loss by less
  // than kMinImprovement (relative), or after kMaxIterations.
  constexpr int kMaxIterations = 40;
  constexpr double kMinImprovement = 1e-4;
  const int max_iterations = std::min(settings.steps, kMaxIterations);
  at::Tensor lambda = at::zeros({out_channels, rank, kh, kw});
  const int64_t goal_numel = goal.values.numel();

  // Radius of the trust region per output channel, as a multiple of the channel's weight norm.
  // 2 allows updates as large as the reference optimiser's on the tiny StyleGAN2 fixture.
  constexpr double kTrustRadius = 2.0;
  at::Tensor radius = kTrustRadius * w0.reshape({out_channels, -1}).norm(2, 1);
  torch::NoGradGuard outer_no_grad;
  at::Tensor losses = channel_losses(g, layer, goal, w0);
  double total = losses.sum().item<double>();
  // The Jacobian changes little between iterations (not at all before the activation of a
  // linear layer), so it is recomputed only every kJacobianRefresh iterations or after a
  // stalled step: each refresh costs r*k*k backward passes, an iteration without one a forward.
  constexpr int kJacobianRefresh = 6;
  at::Tensor jacobian;
  bool refresh_jacobian = true;
  int stalled = 0;
  for (int it = 0; it < max_iterations; ++it) {
    result.losses.push_back(total / goal_numel);
    report(progress, it + 1, max_iterations, total / goal_numel, start);

    // Residual, and Jacobian blocks J[o, p, j] at the current Lambda when they are due.
    bool fresh_jacobian = refresh_jacobian || it % kJacobianRefresh == 0;
    at::Tensor residual;
    if (!fresh_jacobian) {
      residual = per_channel(goal.values - g.run_target(layer, goal.inputs, w0 + delta_of(lambda, d)));
    } else {
      torch::AutoGradMode grad_mode(true);
      at::Tensor lambda_var = lambda.clone().requires_grad_(true);
      at::Tensor output = g.run_target(layer, goal.inputs, w0 + delta_of(lambda_var, d));  // [1, O, h, w]
      residual = per_channel(goal.values - output).detach();                                  // [O, P]
      at::Tensor cotangent = at::zeros_like(output).requires_grad_(true);
      at::Tensor vjp = torch::autograd::grad({(output * cotangent).sum()}, {lambda_var}, {}, true, true)[0];
      std::vector<at::Tensor> columns;
      at::Tensor direction = at::zeros({unknowns});
      for (int64_t j = 0; j < unknowns; ++j) {
        direction.zero_();
        direction[j] = 1.0f;
        at::Tensor v = direction.view({1, rank, kh, kw}).expand({out_channels, rank, kh, kw});
        at::Tensor jvp = torch::autograd::grad({(vjp * v).sum()}, {cotangent}, {}, true, false, true)[0];
        columns.push_back(jvp.defined() ? per_channel(jvp.detach()) : at::zeros_like(residual));
      }
      jacobian = at::stack(columns, 2);  // [O, P, m]
    }

    // Weighted normal equations per channel, lightly damped.
    at::Tensor weights = 1.0 / residual.abs().clamp_min(1e-6 + 1e-4 * residual.abs().mean().item<double>());
    at::Tensor jt_w = jacobian.transpose(1, 2) * weights.unsqueeze(1);  // [O, m, P]
    at::Tensor normal = at::bmm(jt_w, jacobian).to(at::kDouble);         // [O, m, m]
    at::Tensor rhs = at::bmm(jt_w, residual.unsqueeze(2)).to(at::kDouble);
    at::Tensor damping = normal.diagonal(0, 1, 2).mean(1).clamp_min(1e-12) * 1e-6;
    normal = normal + at::eye(unknowns, at::kDouble).unsqueeze(0) * damping.view({-1, 1, 1});
    at::Tensor step = at::linalg_solve(normal, rhs).squeeze(2).to(at::kFloat).view({out_channels, rank, kh, kw});

    // Trust region: each channel's Lambda stays within a ball. Demodulation makes a channel's
    // output invariant to the scale of its weight, so without the bound the loss keeps falling
    // slowly as Lambda grows while the channel loses its response to its original keys; on linear layers an
    // unreachable goal would likewise drive Lambda to sizes that break every other sample.
    auto clamp_to_region = [&](const at::Tensor& candidate) {
      at::Tensor norms = candidate.reshape({out_channels, -1}).norm(2, 1).clamp_min(1e-30);
      at::Tensor factor = (radius / norms).clamp_max(1.0).view({-1, 1, 1, 1});
      return candidate * factor;
    };

    // Line search: per channel keep the best step length; shorter steps are tried only while
    // some channel has not improved yet.
    at::Tensor best_lambda = lambda.clone(), best_losses = losses.clone();
    for (double alpha : {1.0, 0.4, 0.1}) {
      at::Tensor candidate = clamp_to_region(lambda + alpha * step);
      at::Tensor candidate_losses = channel_losses(g, layer, goal, w0 + delta_of(candidate, d));
      at::Tensor better = candidate_losses < best_losses;
      best_lambda = at::where(better.view({-1, 1, 1, 1}), candidate, best_lambda);
      best_losses = at::where(better, candidate_losses, best_losses);
      if ((best_losses < losses).all().item<bool>()) break;
    }
    at::Tensor best_channel_losses = channel_losses(g, layer, goal, w0 + delta_of(best_lambda, d));
    double best_total = best_channel_losses.sum().item<double>();
    if (best_total > total) {  // channels are coupled: fall back to one global step length
      best_lambda = lambda;
      best_channel_losses = losses;
      best_total = total;
      for (double alpha : {1.0, 0.5, 0.25, 0.1, 0.03}) {
        at::Tensor candidate = clamp_to_region(lambda + alpha * step);
        at::Tensor candidate_losses = channel_losses(g, layer, goal, w0 + delta_of(candidate, d));
        double candidate_total = candidate_losses.sum().item<double>();
        if (candidate_total < best_total) {
          best_total = candidate_total;
          best_lambda = candidate;
          best_channel_losses = candidate_losses;
        }
      }
    }
    double improvement = (total - best_total) / std::max(total, 1e-30);
    lambda = best_lambda;
    losses = best_channel_losses;
    total = best_total;
    refresh_jacobian = false;
    if (improvement >= kMinImprovement) {
      stalled = 0;
    } else if (fresh_jacobian) {
      ++stalled;
    } else {
      refresh_jacobian = true;  // a stale Jacobian may be what stalls: retry with a fresh one
    }
    if (stalled >= 2) break;
  }
  result.losses.push_back(total / goal_numel);
  result.lambda = lambda;
}

}  // namespace

EditResult solve_edit(const Generator& generator, int layer, const Goal& goal, const torch::Tensor& d,
                      const SolverSettings& solver, const ProgressCallback& progress) {
  solver.validate();
  const LayerInfo& info = generator.layer(layer);
  if (d.dim() != 2 || d.size(1) != info.key_channels) {
    throw invalid_input("directions must have shape [rank, " + std::to_string(info.key_channels) + "]");
  }
  auto start = Clock::now();
  EditResult result;
  result.layer = layer;
  result.rank = static_cast<int>(d.size(0));
  result.solver = solver.solver;
  result.d = d.to(at::kFloat).contiguous();
  result.weight_before = generator.weight(layer);
  result.goal_loss_initial = goal_loss(generator, layer, goal, result.weight_before);

  if (solver.solver == "adam") {
    solve_adam_weight(generator, layer, goal, result.d, solver, result, progress, start);
  } else if (solver.solver == "adam-lambda") {
    solve_adam_lambda(generator, layer, goal, result.d, solver, result, progress, start);
  } else {
    solve_direct(generator, layer, goal, result.d, solver, result, progress, start);
  }
  result.steps = static_cast<int>(result.losses.size());
  result.weight_after = result.weight_before + delta_of(result.lambda, result.d);
  result.goal_loss_final = goal_loss(generator, layer, goal, result.weight_after);
  result.seconds = seconds_since(start);
  return result;
}

}  // namespace rankone

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
#include <memory>
#include <optional>

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

// The layer output as a function of Lambda [O, m], flattened per channel: values [O, P] and
// the Jacobian's diagonal blocks [O, P, m].
class LambdaFunction {
 public:
  virtual ~LambdaFunction() = default;
  virtual at::Tensor output(const at::Tensor& lambda) const = 0;
  virtual at::Tensor jacobian(const at::Tensor& lambda) const = 0;
  /// Whether a Jacobian costs about as little as an output, so it can be refreshed every iteration.
  virtual bool cheap_jacobian() const = 0;
  /// Whether output channel o is known to depend on Lambda[o] alone, so that the losses of
  /// channels stepped by different lengths add up.
  virtual bool separable() const = 0;
};

// Closed form: the generator's expansion of the layer (see layer_expansion.h).
class ExpandedFunction : public LambdaFunction {
 public:
  explicit ExpandedFunction(LayerExpansion expansion) : expansion_(std::move(expansion)) {}
  at::Tensor output(const at::Tensor& lambda) const override { return expansion_output(expansion_, lambda); }
  at::Tensor jacobian(const at::Tensor& lambda) const override { return expansion_jacobian(expansion_, lambda); }
  bool cheap_jacobian() const override { return true; }
  bool separable() const override { return true; }

 private:
  LayerExpansion expansion_;
};

// Any layer: outputs from run_target, Jacobian columns from m Jacobian-vector products by
// double backward through it. A convolution's output channel o depends only on Lambda[o], so m
// products, each moving one coefficient of every channel at once, give every block.
// NOTE: a norm across channels (pixel norm) breaks that. Each block then also contains the
// other channels' influence, and the iterations stall above the best loss.
class AutogradFunction : public LambdaFunction {
 public:
  AutogradFunction(const Generator& g, int layer, const LayerState& inputs, const at::Tensor& w0,
                   const at::Tensor& d)
      : g_(g), layer_(layer), inputs_(inputs), w0_(w0), d_(d) {}

  at::Tensor output(const at::Tensor& lambda) const override {
    return flatten_channels(g_.run_target(layer_, inputs_, w0_ + delta_of(shaped(lambda), d_)));
  }

  at::Tensor jacobian(const at::Tensor& lambda) const override {
    torch::AutoGradMode grad_mode(true);
    const int64_t out_channels = w0_.size(0), unknowns = lambda.size(1);
    at::Tensor lambda_var = shaped(lambda).clone().requires_grad_(true);
    at::Tensor output = g_.run_target(layer_, inputs_, w0_ + delta_of(lambda_var, d_));
    at::Tensor cotangent = at::zeros_like(output).requires_grad_(true);
    at::Tensor vjp = torch::autograd::grad({(output * cotangent).sum()}, {lambda_var}, {}, true, true)[0];
    std::vector<at::Tensor> columns;
    at::Tensor direction = at::zeros({unknowns});
    for (int64_t j = 0; j < unknowns; ++j) {
      direction.zero_();
      direction[j] = 1.0f;
      at::Tensor v = direction.view({1, unknowns}).expand({out_channels, unknowns}).reshape(lambda_var.sizes());
      at::Tensor jvp = torch::autograd::grad({(vjp * v).sum()}, {cotangent}, {}, true, false, true)[0];
      columns.push_back(jvp.defined() ? flatten_channels(jvp.detach()) : at::zeros({out_channels, output.numel() / out_channels}));
    }
    return at::stack(columns, 2);
  }

  bool cheap_jacobian() const override { return false; }
  bool separable() const override { return false; }

 private:
  at::Tensor shaped(const at::Tensor& lambda) const {
    return lambda.view({w0_.size(0), d_.size(0), w0_.size(2), w0_.size(3)});
  }

  const Generator& g_;
  int layer_;
  const LayerState& inputs_;
  at::Tensor w0_, d_;
};

// The direct solver: iteratively reweighted Gauss-Newton over Lambda [O, m]. Each iteration
// solves one small weighted least-squares system per output channel, with weights 1 / |residual|,
// whose fixed point minimises the L1 goal loss (iteratively reweighted least squares). Where the
// generator expands the layer in closed form, outputs and Jacobians cost a few small matrix
// products. Otherwise they come from the layer itself, and the Jacobian is reused for a few
// iterations because each one costs m backward passes.
void solve_direct(const Generator& g, int layer, const Goal& goal, const at::Tensor& d, const SolverSettings& settings,
                  EditResult& result, const ProgressCallback& progress, Clock::time_point start) {
  torch::NoGradGuard outer_no_grad;
  at::Tensor w0 = result.weight_before;
  const int64_t out_channels = w0.size(0), rank = d.size(0), kh = w0.size(2), kw = w0.size(3);
  const int64_t unknowns = rank * kh * kw;
  const int64_t goal_numel = goal.values.numel();
  const at::Tensor target = flatten_channels(goal.values);  // [O, P]

  std::unique_ptr<LambdaFunction> function;
  if (std::optional<LayerExpansion> expansion = g.expand_target(layer, goal.inputs, d)) {
    function = std::make_unique<ExpandedFunction>(std::move(*expansion));
  } else {
    function = std::make_unique<AutogradFunction>(g, layer, goal.inputs, w0, d);
  }
  auto channel_losses = [&](const at::Tensor& lambda) { return (function->output(lambda) - target).abs().sum(1); };

  // Iterations stop after two in a row with a fresh Jacobian that improve the loss by less
  // than kMinImprovement (relative), or after kMaxIterations.
  constexpr int kMaxIterations = 40;
  constexpr double kMinImprovement = 1e-3;
  // The Jacobian of a layer without an expansion is recomputed every kJacobianRefresh
  // iterations or after a stalled step.
  constexpr int kJacobianRefresh = 6;
  // Radius of the trust region per output channel, as a multiple of the channel's weight norm.
  // 2 allows updates as large as the reference optimiser's on the tiny StyleGAN2 fixture.
  constexpr double kTrustRadius = 2.0;
  const int max_iterations = std::min(settings.steps, kMaxIterations);

  at::Tensor lambda = at::zeros({out_channels, unknowns});
  at::Tensor radius = kTrustRadius * w0.reshape({out_channels, -1}).norm(2, 1);
  at::Tensor losses = channel_losses(lambda);
  double total = losses.sum().item<double>();
  at::Tensor jacobian;
  bool refresh_jacobian = true;
  int stalled = 0;
  for (int it = 0; it < max_iterations; ++it) {
    result.losses.push_back(total / goal_numel);
    report(progress, it + 1, max_iterations, total / goal_numel, start);

    bool fresh_jacobian = function->cheap_jacobian() || refresh_jacobian || it % kJacobianRefresh == 0;
    if (fresh_jacobian) jacobian = function->jacobian(lambda);  // [O, P, m]
    at::Tensor residual = target - function->output(lambda);    // [O, P]

    // Weighted normal equations per channel. `solve_damped` adds factor * (mean of the diagonal)
    // to the diagonal (Levenberg-Marquardt): larger factors give shorter steps that turn toward
    // the gradient.
    at::Tensor weights = 1.0 / residual.abs().clamp_min(1e-6 + 1e-4 * residual.abs().mean().item<double>());
    at::Tensor jt_w = jacobian.transpose(1, 2) * weights.unsqueeze(1);  // [O, m, P]
    at::Tensor normal = at::bmm(jt_w, jacobian).to(at::kDouble);         // [O, m, m]
    at::Tensor rhs = at::bmm(jt_w, residual.unsqueeze(2)).to(at::kDouble);
    at::Tensor diagonal_mean = normal.diagonal(0, 1, 2).mean(1).clamp_min(1e-12).view({-1, 1, 1});
    at::Tensor identity = at::eye(unknowns, at::kDouble).unsqueeze(0);
    auto solve_damped = [&](double factor) {
      at::Tensor damped = normal + identity * (diagonal_mean * factor);
      return at::linalg_solve(damped, rhs).squeeze(2).to(at::kFloat);  // [O, m]
    };
    at::Tensor step = solve_damped(1e-6);

    // Trust region: each channel's Lambda stays within a ball. Demodulation makes a channel's
    // output invariant to the scale of its weight, so without the bound the loss keeps falling
    // slowly as Lambda grows while the channel loses its response to its original keys. On
    // linear layers an unreachable goal would likewise drive Lambda to sizes that break every
    // other sample. Scaling a point back onto the ball is the projection onto it.
    auto clamp_to_region = [&](const at::Tensor& candidate) {
      at::Tensor norms = candidate.norm(2, 1).clamp_min(1e-30);
      return candidate * (radius / norms).clamp_max(1.0).unsqueeze(1);
    };

    // Line search: each channel keeps the best of a few candidates, and later candidates are
    // tried only while some channel has not improved yet. First the Gauss-Newton step at three
    // lengths, then ever more damped steps. A channel on the trust region's boundary needs the
    // damped ones: its Gauss-Newton step points outward, and projecting it back often does not
    // lower the loss, while a short step near the gradient moves along the boundary.
    std::vector<std::pair<double, double>> candidates = {{1e-6, 1.0}, {1e-6, 0.4}, {1e-6, 0.1}};
    for (double factor : {1e-2, 1e-1, 1.0, 10.0}) candidates.emplace_back(factor, 1.0);
    at::Tensor best_lambda = lambda, best_losses = losses;
    for (const auto& [factor, alpha] : candidates) {
      at::Tensor direction = factor == 1e-6 ? step : solve_damped(factor);
      at::Tensor candidate = clamp_to_region(lambda + alpha * direction);
      at::Tensor candidate_losses = channel_losses(candidate);
      at::Tensor better = candidate_losses < best_losses;
      best_lambda = at::where(better.unsqueeze(1), candidate, best_lambda);
      best_losses = at::where(better, candidate_losses, best_losses);
      if ((best_losses < losses).all().item<bool>()) break;
    }
    if (!function->separable()) best_losses = channel_losses(best_lambda);
    double best_total = best_losses.sum().item<double>();
    if (best_total > total) {
      // The layer couples channels (a pixel norm), so mixing step lengths made it worse. One
      // step length for all channels, checked on the whole layer output, decides instead.
      best_lambda = lambda;
      best_losses = losses;
      best_total = total;
      for (double alpha : {1.0, 0.5, 0.25, 0.1, 0.03}) {
        at::Tensor candidate = clamp_to_region(lambda + alpha * step);
        at::Tensor candidate_losses = channel_losses(candidate);
        double candidate_total = candidate_losses.sum().item<double>();
        if (candidate_total < best_total) {
          best_total = candidate_total;
          best_lambda = candidate;
          best_losses = candidate_losses;
        }
      }
    }

    double improvement = (total - best_total) / std::max(total, 1e-30);
    lambda = best_lambda;
    losses = best_losses;
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
  result.lambda = lambda.view({out_channels, rank, kh, kw});
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

// The rewriting method of "Rewriting a Deep Generative Model" (Bau, Liu, Wang,
// Zhu, Torralba, ECCV 2020): goal construction from a copy / paste request,
// ZCA-whitened context directions, and the solvers that change one layer's
// weight W to W + Lambda D.
//
// Shapes: W and W' are canonical [C_out, C_in, k, k]; D is [r, C_in] with
// orthonormal rows; Lambda is [C_out, r, k, k]; W' = W + einsum(Lambda, D).
#pragma once

#include "rankone/models/generator.h"
#include "rankone/progress.h"
#include "rankone/rewriting/request.h"
#include "rankone/rewriting/statistics.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <vector>

namespace rankone {

/// Goal of an edit: the values the edited layer must produce for the goal keys.
struct Goal {
  LayerState inputs;       // cropped layer state of the paste image (key crop and extras)
  torch::Tensor values;    // [1, C_out, h, w] goal values at the cropped value box
  Box key_box, value_box;  // crop boxes at key and value resolution
  Box object_box;          // object's box at value resolution (copy mode)
  torch::Tensor composite; // [1, C_out, H, W] full paste-image value map with the object blended in
};

/// Masks of a request resized to the layer: keys at key resolution, object and paste at value resolution.
torch::Tensor layer_mask(const MaskedImage& masked, int64_t size);

/// Builds the goal: the object's value crop alpha-blended into the paste image's value map,
/// centred on the paste box and clamped to the map, then cropped tightly; for a stride-s layer
/// the key box is the value box divided by s rounded outward and the value box is widened to match.
Goal build_goal(const Generator& generator, int layer, const Request& request);

/// Keys under the context masks: rows [N, C_in] (float32) and their mask weights [N] (> 0).
std::pair<torch::Tensor, torch::Tensor> context_keys(const Generator& generator, int layer, const Request& request);

/// ZCA whitening matrix C^{-1/2} (float64) from the eigendecomposition of C, with eigenvalues
/// clamped below at max_eigenvalue * 1e-12 so a rank-deficient C stays finite.
torch::Tensor zca_matrix(const torch::Tensor& c);

/// Top-`rank` context directions D [rank, C_in] (float32, orthonormal rows): whitened weighted
/// keys, their top right singular vectors mapped back with Z, orthonormalised, signs agreeing
/// with the summed whitened keys.
torch::Tensor context_directions(const torch::Tensor& keys, const torch::Tensor& weights, const torch::Tensor& zca,
                                 int rank);

/// For erase requests: the `rank` input channels with the largest energy under the context
/// masks relative to their second moment, as one-hot rows [rank, C_in].
torch::Tensor erase_directions(const torch::Tensor& keys, const torch::Tensor& weights, const torch::Tensor& c,
                               int rank);

/// Goal of an erase request: the paste crop's values with the chosen key channels zeroed.
Goal build_erase_goal(const Generator& generator, int layer, const Request& request, const torch::Tensor& d);

/// The mean L1 distance between run_target(goal inputs; weight) and the goal values.
double goal_loss(const Generator& generator, int layer, const Goal& goal, const torch::Tensor& weight);

/// Projects a weight delta onto span(D) along the input-channel axis: (delta D^T) D.
torch::Tensor project_on_directions(const torch::Tensor& delta, const torch::Tensor& d);
/// Lambda [C_out, r, k, k] of a delta that lies in span(D): delta D^T.
torch::Tensor lambda_of(const torch::Tensor& delta, const torch::Tensor& d);
/// The delta einsum(Lambda, D) [C_out, C_in, k, k].
torch::Tensor delta_of(const torch::Tensor& lambda, const torch::Tensor& d);

struct EditResult {
  int layer = 0;
  int rank = 1;
  std::string solver;
  int steps = 0;
  torch::Tensor d, lambda;                   // the edit: W' = W + delta_of(lambda, d)
  torch::Tensor weight_before, weight_after;
  double goal_loss_initial = 0, goal_loss_final = 0;  // mean L1 with W and with the saved W'
  std::vector<double> losses;                // per iteration, before its step
  double seconds = 0;                        // solve time, statistics excluded

  /// layer, rank, solver, steps, seconds, goal_loss_initial and goal_loss_final as JSON.
  nlohmann::json summary() const;
};

/// Solves for W' = W + Lambda D minimising the L1 goal loss with the chosen solver. Does not
/// change `generator`'s weight. Calls `progress` once per iteration (cheap).
EditResult solve_edit(const Generator& generator, int layer, const Goal& goal, const torch::Tensor& d,
                      const SolverSettings& solver, const ProgressCallback& progress = nullptr);

/// The whole method for one request: statistics (from the cache when present), goal,
/// directions and solve. Validates image numbers, masks and rank against the model.
EditResult rewrite(const Generator& generator, const Request& request, const SecondMoment& statistics,
                   const ProgressCallback& progress = nullptr);

/// The layer a request edits: its own field, else the model's default.
int request_layer(const Generator& generator, const Request& request);

}  // namespace rankone

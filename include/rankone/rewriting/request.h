// Edit requests: the JSON the reference rewriting UI saves (`object`, `paste`,
// `key`, optional `query`, masks as PNG data URLs) plus optional fields of ours
// so that one request file reproduces an edit.
//
//   {"object": [1, "data:image/png;base64,..."],
//    "paste":  [2, "data:image/png;base64,..."],
//    "key":    [[2, "data:..."], [3, "data:..."]],
//    "model": "dcgan-celeba32", "layer": 2, "rank": 1, "solver": "direct",
//    "steps": 2001, "lr": 0.05, "piter": 10, "mode": "copy",
//    "sampling": {"latents": "rankone", "noise": "sample", "truncation": 1.0},
//    "statistics": {"samples": 1000, "batch_size": 50}}
#pragma once

#include "rankone/models/generator.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

namespace rankone {

/// A mask painted on one generated image.
struct MaskedImage {
  int64_t image = 0;         // sample index
  std::string url;           // PNG data URL as saved
  torch::Tensor mask;        // decoded 8-bit canvas mask [H, W]
};

/// Solver choice and its settings.
struct SolverSettings {
  /// "direct" (fast solve over Lambda), "adam" (the reference optimiser on the full weight,
  /// projected every `piter` steps) or "adam-lambda" (Adam on Lambda directly).
  std::string solver = "direct";
  int steps = 2001;   // Adam iterations (the direct solver uses its own small count)
  double lr = 0.05;   // Adam learning rate
  int piter = 10;     // projection period of the reference optimiser, in steps

  nlohmann::json to_json() const;
  void validate() const;
};

/// Second-moment statistics settings: which samples and how they are batched.
struct StatisticsSettings {
  int64_t samples = 1000;
  int64_t batch_size = 0;  // 0: 10 with reference noise (as the reference tool), else 50

  int64_t effective_batch_size(const SamplingSettings& sampling) const;
  nlohmann::json to_json() const;
};

struct Request {
  std::string mode = "copy";            // "copy" (copy/paste a thing) or "erase" (remove it)
  std::optional<MaskedImage> object;    // required for "copy"
  MaskedImage paste;
  std::vector<MaskedImage> keys;        // context; defaults to the paste mask
  std::optional<MaskedImage> query;     // kept for the UI, unused by the solve
  std::string model;                    // optional
  std::optional<int> layer;
  int rank = 1;
  SolverSettings solver;
  SamplingSettings sampling;
  StatisticsSettings statistics;
  nlohmann::json unknown = nlohmann::json::object();  // other fields, written back unchanged

  /// Parses and validates; throws an invalid-input Error naming `source` and the bad field.
  static Request from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  /// Context masks, or the paste mask alone when none is given.
  std::vector<MaskedImage> context() const;
};

/// Reads a request file. Throws an Error naming the file and the problem.
Request load_request(const std::string& path);
/// Writes a request file atomically (temporary file, then rename).
void save_request(const std::string& path, const Request& request);

}  // namespace rankone

// The studio's model state: an edited and an original copy of the generator, the
// stack of applied edits, the shared statistics, and the operations the routes
// call (render a sample, context matches, search, edit, undo, revert).
//
// Locking: `mutex_` guards the edited generator and the patch stack. Rendering,
// context matches, searches and the solve take it shared, so images keep being
// served while an edit runs. Applying, undoing and reverting take it exclusive for
// the moment they change weights. The original generator is never written, so it
// needs no lock.
#pragma once

#include "rankone/models/generator.h"
#include "rankone/progress.h"
#include "rankone/rewriting/patch.h"
#include "rankone/rewriting/request.h"
#include "rankone/serving/studio_server.h"
#include "serving/statistics_store.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

namespace rankone::serving {

/// Context masks and the layer and rank their directions D are taken at.
struct ContextQuery {
  std::vector<MaskedImage> keys;
  int layer = 0;
  int rank = 1;
};

class StudioSession {
 public:
  /// Loads `model` twice and creates `options.data_dir`/patches. Throws rankone::Error.
  StudioSession(const std::string& model, const StudioOptions& options);

  /// Model, layers (with whether their statistics are ready), sampling and edit stack.
  nlohmann::json model_info() const;
  /// Throws a not-found Error unless 0 <= index < sample_count.
  void check_sample(int64_t index) const;
  /// Throws an invalid-input Error unless 1 <= scale and image_size * scale <= 4096.
  void check_scale(int scale) const;

  /// PNG bytes of sample `index` from the edited or the original model, upscaled by `scale`.
  std::string render_sample(int64_t index, bool edited, int scale) const;

  /// Parses {"key": [[image, mask URL], ...], "layer", "rank"}. The layer defaults to the model's.
  ContextQuery parse_context_query(const nlohmann::json& body) const;
  /// For each of `samples`, PNG bytes of the image with a heatmap of where the context
  /// directions fire: |relu(D k)| at each key pixel, divided by its mask-weighted mean over the
  /// painted context keys, clamped to [0, 1] and resized bilinearly to the image.
  std::vector<std::string> context_heatmaps(const ContextQuery& query, const std::vector<int64_t>& samples,
                                            int scale, bool edited);
  /// The `top` samples among `samples` whose strongest key pixel matches the context best, as
  /// [{"index", "score"}] with the score on the heatmap scale (1: as strong as the painted keys
  /// on average).
  nlohmann::json search(const ContextQuery& query, const std::vector<int64_t>& samples, int top);

  /// Parses and checks a posted edit request against this model, and fills in the server's
  /// sampling and statistics settings and the layer. Throws invalid-input or not-found Errors.
  Request prepare_request(const nlohmann::json& body) const;
  /// Computes the layer's statistics, solves the edit, saves its patch as
  /// data_dir/patches/<id>.safetensors and applies it. Returns a JSON summary.
  /// Throws a conflict Error when another edit is running.
  nlohmann::json run_edit(const Request& request, const std::string& id, const ProgressCallback& progress);
  /// Removes the last applied edit. Throws a conflict Error while an edit runs.
  nlohmann::json undo();
  /// Removes every applied edit. Throws a conflict Error while an edit runs.
  nlohmann::json revert();
  /// {"revision", "applied"}: a counter of weight changes and a summary of each applied edit.
  nlohmann::json stack_info() const;
  /// Path of the last applied edit's patch file; empty when none is applied.
  std::string last_patch_path() const;

  StatisticsStore& statistics() { return *statistics_; }
  const Generator& original() const { return *original_; }

 private:
  /// Generates one sample [1, 3, S, S] with the original or the edited weights (the latter under
  /// the shared lock). The caller holds a NoGradGuard.
  at::Tensor generate_sample(int64_t index, bool edited) const;

  nlohmann::json stack_info_locked() const;
  /// D [rank, C_in] of the query and the mean response of the painted keys, which maps to heat 1.
  std::pair<torch::Tensor, double> context_direction(const ContextQuery& query);
  /// |relu(D k)| / normaliser at every key pixel of `samples` from the edited model: [B, H, W].
  torch::Tensor context_response(const ContextQuery& query, const torch::Tensor& d, double normaliser,
                                 const std::vector<int64_t>& samples);

  StudioOptions options_;
  std::string model_name_;
  std::unique_ptr<Generator> original_;
  std::unique_ptr<Generator> edited_;
  std::unique_ptr<StatisticsStore> statistics_;

  mutable std::shared_mutex mutex_;
  PatchStack stack_;
  std::vector<nlohmann::json> applied_;  // summary of each applied edit, parallel to stack_.applied()
  long revision_ = 0;                    // incremented whenever the edited model's weights change

  // Whether an edit runs, under its own mutex so that undo and revert fail with 409 at once
  // instead of waiting for the solve's shared lock.
  std::mutex editing_mutex_;
  bool editing_ = false;
};

}  // namespace rankone::serving

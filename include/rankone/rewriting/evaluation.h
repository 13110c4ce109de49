// Measuring an edit: on the same samples of the original and the patched model, where the
// rewritten rule applies, how much the images change inside and outside that region, and how
// a discriminator's realism score moves. Work is done in chunks whose results are saved, so an
// interrupted run resumes where it stopped.
//
//   rankone::EvaluationSettings settings;
//   settings.samples = rankone::parse_sample_indices("0-999");
//   rankone::EvaluationResult result =
//       rankone::evaluate_edit(*generator, {"sunglasses.safetensors"}, &critic, settings, "eval-out");
//   // eval-out/report.html, report.json and the figures beside them
//
// Where the rule applies. A patch changes layer L by W' = W + Lambda D, so the layer output of
// key k moves by Lambda (D k): the response |D k| (the Euclidean norm over D's r rows) drives the
// change. rankone divides it by the request's own context response, the mask-weighted mean of
// |D k| over the keys under the request's context masks, so 1 means "as strong as where the
// user painted". This relative response map (key resolution, bilinearly upsampled to the image;
// with several patches the maximum over them) is thresholded at `threshold`: those pixels are
// the region where the rule applies, and a sample is counted when its region is not empty.
// The default threshold is 1, the context's mean response. Half of it marks about a third of
// all pixels on the bundled sunglasses edit, because the soft edges of a painted mask pull the
// mean down and the response of a rank-one edit is broad.
#pragma once

#include "rankone/models/discriminator.h"
#include "rankone/models/generator.h"
#include "rankone/progress.h"
#include "rankone/rewriting/patch.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <string>
#include <vector>

namespace rankone {

struct EvaluationSettings {
  std::vector<int64_t> samples;  // sample indices, compared in this order
  std::string samples_text;      // as the user wrote them, for the report
  SamplingSettings sampling;
  /// Relative response (response / context response) from which the rule counts as applying.
  double threshold = 1.0;
  int64_t chunk_size = 50;  // samples per chunk, with partial results saved after each chunk
  int grid_samples = 8;     // samples in each of the most and least changed grids
  bool restart = false;     // discard saved partial results instead of resuming from them

  /// Throws an invalid-input Error naming the bad value.
  void validate() const;
};

/// One patch under evaluation and the scale of its response.
struct EvaluatedPatch {
  std::string path;
  std::string file_sha256;  // of the patch file's bytes
  Patch patch;
  double context_response = 0;  // mask-weighted mean |D k| over the request's context keys
};

/// Per-sample measures, one entry per sample of EvaluationSettings::samples. Pixel changes are
/// mean |after - before| over the RGB channels in the generator's [-1, 1] range (multiply by
/// 127.5 for 8-bit levels), summed over pixels.
struct SampleMeasures {
  torch::Tensor max_response;    // [N] float64: max over image pixels of the relative response
  torch::Tensor region_pixels;   // [N] float64: pixels where the rule applies
  torch::Tensor change_inside;   // [N] float64: change summed over the region
  torch::Tensor change_outside;  // [N] float64: change summed over the other pixels
  torch::Tensor logit_before;    // [N] float64: discriminator logits (NaN without a discriminator)
  torch::Tensor logit_after;     // [N] float64
  torch::Tensor done;            // [N] bool: measured (in this run or read from partial results)

  /// Empty measures of `count` samples (nothing done).
  static SampleMeasures empty(int64_t count);
};

struct EvaluationResult {
  std::vector<EvaluatedPatch> patches;
  SampleMeasures measures;
  int64_t resumed = 0;   // samples read from saved partial results
  nlohmann::json report;  // the content of report.json
};

/// Relative response map [B, H, W] (float32) of layer keys [B, C_in, H, W] to a patch:
/// |D k| / context_response at each position.
torch::Tensor relative_response(const torch::Tensor& keys, const EvaluatedPatch& patch);

/// Loads the patches, checks that they fit `generator` (applying and reverting each) and computes
/// each one's context response from the request saved in it, with the generator's weights as
/// loaded. Throws an invalid-input Error for a patch made for another model, without a request,
/// or whose context gives no response.
std::vector<EvaluatedPatch> load_evaluated_patches(Generator& generator, const std::vector<std::string>& paths);

/// Compares `generator` before and after `patch_paths` on settings.samples and writes
/// `out_dir`/report.html, report.json and the PNG figures. Partial results live in
/// `out_dir`/partial.safetensors, written atomically after every chunk; a later call with the same
/// settings resumes from them, and one with other settings throws an invalid-input Error naming
/// the difference (unless settings.restart). `progress` is called after each chunk with the
/// samples done; when it returns false the partial results are saved and a kConflict Error
/// ("interrupted") is thrown. `discriminator` may be null. `generator` is left unpatched.
EvaluationResult evaluate_edit(Generator& generator, const std::vector<std::string>& patch_paths,
                               const Discriminator* discriminator, const EvaluationSettings& settings,
                               const std::string& out_dir, const ProgressCallback& progress = nullptr);

}  // namespace rankone

// Internal: the figures and pages of an evaluation report (histograms drawn as PNGs, sample
// grids with heatmaps, report.html and report.json).
#pragma once

#include "rankone/formats/image.h"
#include "rankone/rewriting/evaluation.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace rankone::evaluation {

/// Before and after images of a few samples with their response and change maps.
struct ComparedSamples {
  std::vector<int64_t> indices;
  torch::Tensor before, after;  // [K, 3, S, S] in [-1, 1]
  torch::Tensor response;       // [K, S, S] relative response upsampled to the image
  torch::Tensor change;         // [K, S, S] mean |after - before| over RGB
};

/// A histogram drawn as an image, with the pixel positions of its ticks so that the page can
/// print their labels beside the picture.
struct HistogramFigure {
  Image image;
  std::vector<std::pair<int, std::string>> x_ticks;  // x pixel, label
  std::vector<std::pair<int, std::string>> y_ticks;  // y pixel, label
};

/// Draws one or more series over the same `bins` bins of [low, high] as side-by-side bars in
/// `colors`, counting values outside the range in the end bins. The figure has axes, five x ticks
/// and y ticks at each quarter of the tallest bar rounded up to a multiple of 4. A dashed red line
/// marks `marker` when it lies in the range.
HistogramFigure draw_histogram(const std::vector<std::vector<double>>& series, double low, double high, int bins,
                               const std::vector<std::array<uint8_t, 3>>& colors, double marker);

/// A grid with one column per sample and four rows: before, after, after with the change as a
/// heatmap, and before with the relative response as a heatmap and the region outlined.
Image draw_sample_grid(const ComparedSamples& samples, double threshold);

/// Writes report.json, report.html and the figures into `out_dir`.
void write_report(const std::string& out_dir, const nlohmann::json& report, const SampleMeasures& measures,
                  const ComparedSamples& most_changed, const ComparedSamples& least_changed, double threshold,
                  bool with_discriminator);

}  // namespace rankone::evaluation

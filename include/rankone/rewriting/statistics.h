// Second-moment statistics C = E[k k^T] of a layer's keys, the metric in which
// a rewrite leaves other keys alone.
#pragma once

#include "rankone/models/generator.h"
#include "rankone/progress.h"
#include "rankone/rewriting/request.h"

#include <torch/types.h>

#include <string>

namespace rankone {

struct SecondMoment {
  torch::Tensor c;     // [C_in, C_in] float64: sum over samples and positions of k k^T, divided by count
  int64_t count = 0;   // number of key vectors (samples x H x W)
  double seconds = 0;  // time spent computing (0 when read from the cache)
  bool from_cache = false;
};

/// Streams samples 0 .. settings.samples - 1 through the network up to `layer` and
/// accumulates sum k k^T in float64 with one matrix product per batch.
SecondMoment compute_second_moment(const Generator& generator, int layer, const SamplingSettings& sampling,
                                   const StatisticsSettings& settings, const ProgressCallback& progress = nullptr);

/// Default folder of the statistics cache: $RANKONE_CACHE, else ~/.cache/rankone/stats.
std::string statistics_cache_dir();

/// Returns the cached statistics for (model weights, layer, sampling, statistics settings) from
/// `cache_dir`, or computes and caches them. A cache file that is corrupt, truncated or made for
/// other settings is detected (checksum and metadata), logged, and recomputed. An empty
/// `cache_dir` disables the cache.
SecondMoment load_or_compute_second_moment(const Generator& generator, int layer, const SamplingSettings& sampling,
                                           const StatisticsSettings& settings, const std::string& cache_dir,
                                           const ProgressCallback& progress = nullptr);

}  // namespace rankone

// Per-layer key statistics shared by the studio's edits, context matches and
// searches: each layer's are computed (or read from the disk cache) once, and a
// caller that needs them while another thread computes them waits.
#pragma once

#include "rankone/models/generator.h"
#include "rankone/progress.h"
#include "rankone/rewriting/request.h"
#include "rankone/rewriting/statistics.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>

namespace rankone::serving {

class StatisticsStore {
 public:
  /// `generator` must stay unpatched and outlive the store: statistics describe the original model.
  StatisticsStore(const Generator& generator, SamplingSettings sampling, StatisticsSettings settings,
                  std::string cache_dir);

  /// Returns the statistics of `layer`, computing them with `progress` unless another thread is
  /// already computing them, in which case it waits for that thread. When that thread fails (for
  /// example, cancelled), a waiting caller computes them itself.
  SecondMoment get(int layer, const ProgressCallback& progress = nullptr);
  bool ready(int layer) const;
  const StatisticsSettings& settings() const { return settings_; }

 private:
  const Generator& generator_;
  const SamplingSettings sampling_;
  const StatisticsSettings settings_;
  const std::string cache_dir_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::map<int, SecondMoment> ready_;
  std::set<int> computing_;
};

}  // namespace rankone::serving

#include "serving/statistics_store.h"

namespace rankone::serving {

StatisticsStore::StatisticsStore(const Generator& generator, SamplingSettings sampling, StatisticsSettings settings,
                                 std::string cache_dir)
    : generator_(generator), sampling_(std::move(sampling)), settings_(settings), cache_dir_(std::move(cache_dir)) {}

SecondMoment StatisticsStore::get(int layer, const ProgressCallback& progress) {
  generator_.layer(layer);  // throws an invalid-input Error for an unknown layer

  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return computing_.count(layer) == 0; });
    auto it = ready_.find(layer);
    if (it != ready_.end()) return it->second;
    computing_.insert(layer);
  }

  // Computed outside the lock so other layers and other callers are not held up.
  try {
    SecondMoment moment = load_or_compute_second_moment(generator_, layer, sampling_, settings_, cache_dir_, progress);
    std::lock_guard<std::mutex> lock(mutex_);
    ready_[layer] = moment;
    computing_.erase(layer);
    changed_.notify_all();
    return moment;
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    computing_.erase(layer);
    changed_.notify_all();
    throw;
  }
}

bool StatisticsStore::ready(int layer) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return ready_.count(layer) != 0;
}

}  // namespace rankone::serving

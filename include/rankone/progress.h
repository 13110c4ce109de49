// Progress reporting for long work (statistics, solving, evaluation).
#pragma once

#include <atomic>
#include <functional>
#include <string>

namespace rankone {

/// One progress report: `done` of `total` units of the task named `task`.
struct Progress {
  std::string task;     // e.g. "statistics", "solve"
  long done = 0;
  long total = 0;
  double loss = -1.0;   // current objective where the task has one, else negative
  double seconds = 0.0; // wall time since the task started
};

/// Called on the working thread; must be cheap. Returning false cancels the task:
/// the task then throws an Error of kind kConflict ("cancelled").
using ProgressCallback = std::function<bool(const Progress&)>;

}  // namespace rankone

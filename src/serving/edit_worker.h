// The studio's single worker thread: runs one long job (an edit, or the
// statistics of a layer) at a time and publishes its progress for polling.
#pragma once

#include "rankone/progress.h"

#include <nlohmann/json.hpp>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace rankone::serving {

class EditWorker {
 public:
  /// A job receives its id, reports through the callback and returns a JSON summary for the status.
  using Job = std::function<nlohmann::json(const std::string& id, const ProgressCallback&)>;

  EditWorker();
  ~EditWorker();

  /// Queues `job` of `kind` ("edit" or "statistics") and returns its id. Throws a
  /// conflict Error (HTTP 409) naming the running job when one is queued or running.
  std::string start(const std::string& kind, Job job);
  /// The current or last job: id, kind, state (idle, running, done, failed,
  /// cancelled), task, step, total, loss, seconds, error and result.
  nlohmann::json status() const;
  bool busy() const;
  /// Id of the queued or running job of `kind`, or an empty string when there is none.
  std::string active_job(const std::string& kind) const;
  /// Asks the running job to stop at its next progress report; it ends "cancelled".
  void cancel();
  /// Cancels the running job and joins the thread. Later start() calls throw.
  void stop();

 private:
  void run();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  Job pending_;
  bool busy_ = false;
  bool cancel_requested_ = false;
  bool stopping_ = false;
  long next_id_ = 1;
  nlohmann::json status_;
  std::thread thread_;
};

}  // namespace rankone::serving

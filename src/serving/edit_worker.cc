#include "serving/edit_worker.h"

#include "rankone/error.h"

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <chrono>

namespace rankone::serving {

using nlohmann::json;

EditWorker::EditWorker() : status_({{"state", "idle"}}), thread_([this] { run(); }) {}

EditWorker::~EditWorker() { stop(); }

std::string EditWorker::start(const std::string& kind, Job job) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) throw Error(ErrorKind::kConflict, "the server is shutting down");
  if (busy_) {
    throw Error(ErrorKind::kConflict, "job " + status_.value("id", std::string()) + " (" +
                                          status_.value("kind", std::string()) +
                                          ") is still running: wait for it or cancel it first");
  }
  std::string id = kind + "-" + std::to_string(next_id_++);
  busy_ = true;
  cancel_requested_ = false;
  pending_ = std::move(job);
  status_ = {{"id", id}, {"kind", kind}, {"state", "running"}, {"task", "queued"}, {"step", 0},
             {"total", 0}, {"loss", nullptr}, {"seconds", 0.0}};
  wake_.notify_all();
  return id;
}

json EditWorker::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

bool EditWorker::busy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return busy_;
}

std::string EditWorker::active_job(const std::string& kind) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!busy_ || status_.value("kind", std::string()) != kind) return "";
  return status_.value("id", std::string());
}

void EditWorker::cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (busy_) cancel_requested_ = true;
}

void EditWorker::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    cancel_requested_ = true;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void EditWorker::run() {
  for (;;) {
    Job job;
    std::string id, kind;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || pending_; });
      if (stopping_ && !pending_) return;
      job = std::move(pending_);
      pending_ = nullptr;
      id = status_["id"].get<std::string>();
      kind = status_["kind"].get<std::string>();
    }

    auto started = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
    ProgressCallback progress = [this](const Progress& p) {
      std::lock_guard<std::mutex> lock(mutex_);
      status_["task"] = p.task;
      status_["step"] = p.done;
      status_["total"] = p.total;
      status_["loss"] = p.loss >= 0 ? json(p.loss) : json(nullptr);
      return !cancel_requested_;
    };

    // The job's outcome: its summary, or the error it raised and the HTTP status of that error.
    json result;
    std::string state = "done", error;
    int error_status = 0;
    spdlog::info("job {} ({}) started", id, kind);
    try {
      result = job(id, progress);
    } catch (const Error& e) {
      error = e.what();
      error_status = e.kind() == ErrorKind::kInvalidInput ? 400
                     : e.kind() == ErrorKind::kNotFound   ? 404
                     : e.kind() == ErrorKind::kConflict   ? 409
                                                          : 500;
      state = "failed";
    } catch (const c10::Error& e) {
      error = std::string("libtorch: ") + e.what_without_backtrace();
      error_status = 500;
      state = "failed";
    } catch (const std::exception& e) {
      error = e.what();
      error_status = 500;
      state = "failed";
    }

    std::lock_guard<std::mutex> lock(mutex_);
    if (state == "failed" && cancel_requested_) state = "cancelled";
    status_["state"] = state;
    status_["seconds"] = elapsed();
    if (state == "done") {
      status_["result"] = result;
      spdlog::info("job {} ({}) done in {:.2f} s", id, kind, elapsed());
    } else if (state == "cancelled") {
      spdlog::info("job {} ({}) cancelled after {:.2f} s", id, kind, elapsed());
    } else {
      status_["error"] = error;
      status_["status"] = error_status;
      spdlog::error("job {} ({}) failed with status {}: {}", id, kind, error_status, error);
    }
    busy_ = false;
    cancel_requested_ = false;
  }
}

}  // namespace rankone::serving

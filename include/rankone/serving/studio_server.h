// The rewriting studio: an HTTP server that serves the browser page in web/ and
// a JSON API over one generator (samples, context matches, edits on a worker
// thread, undo, saved requests and patches).
//
//   rankone::StudioOptions options;
//   options.port = 0;                                  // any free port
//   rankone::StudioServer server("dcgan-celeba32", options);
//   int port = server.bind();                          // throws when the address is taken
//   std::thread thread([&] { server.listen(); });      // serves until stop()
//   ...
//   server.stop();
//   thread.join();
//
// Status codes: 400 invalid input, 403 a path outside the web folder, 404 unknown
// sample, request or file, 409 a job already running, 413 a body over
// max_body_bytes, 415 a body that is not JSON, 500 an internal error. Every error
// body is {"error": "<message>", "id": "<error id>"}, and the id is logged.
#pragma once

#include "rankone/models/generator.h"
#include "rankone/rewriting/request.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace rankone {

struct StudioOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                        // 0 picks a free port
  std::string data_dir = "rankone-studio";  // saved requests (requests/) and patches (patches/)
  std::string web_dir;                    // empty: the web/ folder of the source tree
  std::size_t max_body_bytes = 16u << 20;
  int64_t sample_count = 100000;          // samples 0 .. sample_count - 1 exist
  int64_t max_search_samples = 10000;     // maximum samples one search may score
  SamplingSettings sampling;
  /// Used by every edit; the `statistics` field of a posted request is replaced by these.
  StatisticsSettings statistics;
  std::string cache_dir;                  // statistics cache folder; empty disables the cache
  bool precompute_statistics = true;      // start computing the default layer's statistics at once
};

class StudioServer {
 public:
  /// Loads `model` (twice: one copy stays original so both versions render without
  /// locking each other), creates the data folders, starts the worker thread and
  /// registers the routes. Throws rankone::Error for a bad model or unusable folder.
  StudioServer(const std::string& model, StudioOptions options);
  ~StudioServer();
  StudioServer(const StudioServer&) = delete;
  StudioServer& operator=(const StudioServer&) = delete;

  /// Binds options.host:options.port and returns the port (the chosen one for port 0).
  /// Throws an internal Error when the address cannot be bound.
  int bind();
  /// Serves requests on the calling thread until stop() is called.
  void listen();
  /// Stops listening, cancels a running job and joins the worker. Safe to call twice
  /// and from another thread.
  void stop();
  /// "http://host:port/" once bound.
  std::string url() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rankone

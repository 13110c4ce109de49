#include "rankone/serving/studio_server.h"

#include "rankone/error.h"
#include "rankone/models/latents.h"
#include "rankone/rewriting/masks.h"
#include "serving/edit_worker.h"
#include "serving/http_guards.h"
#include "serving/request_store.h"
#include "serving/studio_session.h"

#include <c10/util/Exception.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

namespace rankone {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Maximum number of samples one context-matches request renders.
constexpr size_t kMaxContextSamples = 256;
// Connections the kernel queues for the accept thread. Linux caps it at net.core.somaxconn.
constexpr int kListenBacklog = 128;

int status_of(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidInput: return 400;
    case ErrorKind::kNotFound: return 404;
    case ErrorKind::kConflict: return 409;
    case ErrorKind::kInternal: return 500;
  }
  return 500;
}

json parse_json_body(const httplib::Request& req) {
  try {
    return json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw invalid_input(std::string("the body is not valid JSON: ") + e.what());
  }
}

// Reads an integer query parameter. Throws an invalid-input Error for text that is not one.
int int_param(const httplib::Request& req, const char* name, int fallback) {
  if (!req.has_param(name)) return fallback;
  std::string text = req.get_param_value(name);
  try {
    size_t used = 0;
    int value = std::stoi(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw invalid_input(std::string("query parameter '") + name + "' must be an integer, got '" + text.substr(0, 40) +
                      "'");
}

bool bool_param(const httplib::Request& req, const char* name, bool fallback) {
  if (!req.has_param(name)) return fallback;
  std::string text = req.get_param_value(name);
  if (text == "1" || text == "true") return true;
  if (text == "0" || text == "false") return false;
  throw invalid_input(std::string("query parameter '") + name + "' must be 0 or 1, got '" + text.substr(0, 40) + "'");
}

// Sample numbers from a "samples" field: text such as "0-11" or a list of integers.
std::vector<int64_t> samples_field(const json& body, const char* name, const std::string& fallback, size_t max_count) {
  if (!body.contains(name)) return parse_sample_indices(fallback, max_count);
  const json& value = body[name];
  if (value.is_string()) return parse_sample_indices(value.get<std::string>(), max_count);
  if (!value.is_array()) throw invalid_input(std::string("'") + name + "' must be text such as \"0-11\" or a list");
  if (value.size() > max_count) {
    throw invalid_input(std::string("'") + name + "' lists more than " + std::to_string(max_count) + " samples");
  }
  std::vector<int64_t> samples;
  for (const json& item : value) {
    if (!item.is_number_integer()) throw invalid_input(std::string("'") + name + "' must list integers");
    samples.push_back(item.get<int64_t>());
  }
  return samples;
}

void send_json(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw not_found(path + ": file not found");
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

}  // namespace

class StudioServer::Impl {
 public:
  // Checks the options, loads the model (in session_), starts the worker (worker_) and
  // registers the routes.
  Impl(const std::string& model, StudioOptions options)
      : options_(checked_options(std::move(options))),
        session_(model, options_),
        requests_((fs::path(options_.data_dir) / "requests").string()),
        error_prefix_(make_error_prefix()) {
    configure_server();
    register_api_routes();
    register_edit_routes();
    register_request_routes();
    register_static_routes();
    if (options_.precompute_statistics) queue_statistics(session_.original().default_layer());
  }

  int bind() {
    port_ = options_.port == 0 ? http_.bind_to_any_port(options_.host)
                               : (http_.bind_to_port(options_.host, options_.port) ? options_.port : -1);
    if (port_ < 0) {
      throw Error(ErrorKind::kInternal, "cannot listen on " + options_.host + ":" + std::to_string(options_.port) +
                                            ": the port is in use or not permitted; choose another --port");
    }

    // cpp-httplib 0.11.4 listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into
    // Debian's shared library). When a page or a script opens more connections at once while
    // the accept thread waits for a core, the kernel drops the surplus handshakes and the
    // clients retry only after a second. Linux lets a second listen() call raise the backlog of
    // a listening socket. Where that fails, the socket keeps httplib's backlog.
    if (listen_socket_ >= 0 && ::listen(listen_socket_, kListenBacklog) != 0) {
      spdlog::warn("failed to raise the listen backlog to {} connections, so bursts of connections may wait "
                   "a second: {}",
                   kListenBacklog, std::strerror(errno));
    }
    return port_;
  }

  void listen() {
    {
      std::lock_guard<std::mutex> lock(listen_mutex_);
      if (stop_requested_) return;
      listen_started_ = true;
    }
    http_.listen_after_bind();
    listen_returned_ = true;
  }

  void stop() {
    // In cpp-httplib 0.11.4, stop() does nothing until listen_after_bind() has started its
    // accept loop. So a stop that comes earlier keeps listen() from starting or waits for the loop.
    bool wait_for_loop = false;
    {
      std::lock_guard<std::mutex> lock(listen_mutex_);
      stop_requested_ = true;
      wait_for_loop = listen_started_;
    }
    while (wait_for_loop && !http_.is_running() && !listen_returned_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    http_.stop();
    worker_.stop();
  }

  std::string url() const {
    std::string host = options_.host.find(':') != std::string::npos ? "[" + options_.host + "]" : options_.host;
    return "http://" + host + ":" + std::to_string(port_) + "/";
  }

 private:
  // Validates `options` before the slow model load and fills in the default web folder.
  static StudioOptions checked_options(StudioOptions options) {
    options.sampling.validate();
    if (options.port < 0 || options.port > 65535) {
      throw invalid_input("port " + std::to_string(options.port) + " is out of range 0 to 65535");
    }
    if (options.max_body_bytes == 0) throw invalid_input("the body size limit must be positive");
    if (options.sample_count < 1) throw invalid_input("the studio needs at least one sample");
    if (options.max_search_samples < 1) throw invalid_input("the search limit must be at least one sample");
    if (options.statistics.samples < 1 || options.statistics.batch_size < 0) {
      throw invalid_input("statistics samples must be positive and the batch size non-negative");
    }
    if (options.web_dir.empty()) options.web_dir = RANKONE_WEB_DIR;
    if (!fs::is_regular_file(fs::path(options.web_dir) / "index.html")) {
      throw not_found("web folder " + options.web_dir + " has no index.html: pass the studio's web/ folder with --web");
    }
    return options;
  }

  static std::string make_error_prefix() {
    std::random_device device;
    return fmt::format("{:06x}", device() & 0xffffff);
  }

  // Logs a caught error with a fresh id and writes the JSON error body.
  void send_error(const httplib::Request& req, httplib::Response& res, int status, const std::string& message) {
    std::string id = error_prefix_ + "-" + std::to_string(++error_count_);
    if (status >= 500) {
      spdlog::error("{} {} {}: {} (error id {})", req.method, req.path, status, message, id);
    } else {
      spdlog::warn("{} {} {}: {} (error id {})", req.method, req.path, status, message, id);
    }
    send_json(res, {{"error", message}, {"id", id}}, status);
  }

  void configure_server() {
    // httplib's default socket options add SO_REUSEPORT, which would let a second studio bind
    // the same port and share its connections. SO_REUSEADDR alone still allows a restart while
    // old connections are in TIME_WAIT.
    http_.set_socket_options([this](socket_t socket) {
      int enable = 1;
      setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &enable, sizeof(enable));
      listen_socket_ = socket;  // the last socket given here is the one that was bound
    });
    http_.set_payload_max_length(options_.max_body_bytes);
    http_.set_default_headers({{"X-Content-Type-Options", "nosniff"},
                               {"Cache-Control", "no-store"},
                               {"Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'"}});

    // Checks that need only the headers, before any body is read.
    bool loopback = serving::is_loopback_address(options_.host);
    http_.set_pre_routing_handler([this, loopback](const httplib::Request& req, httplib::Response& res) {
      if (loopback && !serving::is_loopback_host_header(req.get_header_value("Host"))) {
        send_error(req, res, 403, "Host header '" + req.get_header_value("Host").substr(0, 80) +
                                      "' is not this machine: open the studio at " + url());
        return httplib::Server::HandlerResponse::Handled;
      }
      bool has_body = std::strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10) > 0 ||
                      req.has_header("Transfer-Encoding");
      if ((req.method == "POST" || req.method == "PUT") && has_body &&
          req.get_header_value("Content-Type").rfind("application/json", 0) != 0) {
        send_error(req, res, 415, "the body must be JSON sent with Content-Type: application/json");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });

    http_.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr error) {
      try {
        std::rethrow_exception(error);
      } catch (const Error& e) {
        send_error(req, res, status_of(e.kind()), e.what());
      } catch (const json::exception& e) {
        // Handlers read fields with json::value and get, which throw on a field of the wrong type.
        send_error(req, res, 400, std::string("invalid field in the JSON body: ") + e.what());
      } catch (const c10::Error& e) {
        send_error(req, res, 500, std::string("libtorch: ") + e.what_without_backtrace());
      } catch (const std::exception& e) {
        send_error(req, res, 500, e.what());
      } catch (...) {
        send_error(req, res, 500, "unknown error");
      }
    });

    // Errors that httplib raises itself (413 body too large, 400 malformed request, 404 no
    // route) come without a body, so they get the same JSON shape here.
    http_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                        httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string message = res.status == 413 ? "the body is larger than the limit of " +
                                                    std::to_string(options_.max_body_bytes) + " bytes"
                            : res.status == 404 ? "not found: " + req.path.substr(0, 120)
                            : res.status == 405 ? "method " + req.method + " is not allowed on " + req.path.substr(0, 120)
                                                : "invalid HTTP request (status " + std::to_string(res.status) + ")";
      send_error(req, res, res.status, message);
      return httplib::Server::HandlerResponse::Handled;
    }));

    http_.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      spdlog::debug("{} {} -> {}", req.method, req.path, res.status);
    });
  }

  void register_api_routes() {
    http_.Get("/api/model", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, session_.model_info());
    });

    http_.Get(R"(/api/samples/(\d{1,12})\.png)", [this](const httplib::Request& req, httplib::Response& res) {
      int64_t index = std::stoll(req.matches[1].str());
      std::string png = session_.render_sample(index, bool_param(req, "edited", true), int_param(req, "scale", 1));
      res.set_content(png, "image/png");
    });

    // Body: {"key": [[image, mask URL], ...], "layer", "rank", "samples": "0-11", "scale", "edited"}.
    http_.Post("/api/context", [this](const httplib::Request& req, httplib::Response& res) {
      json body = parse_json_body(req);
      serving::ContextQuery query = session_.parse_context_query(body);
      std::vector<int64_t> samples = samples_field(body, "samples", "0-11", kMaxContextSamples);
      int scale = body.value("scale", 1);
      std::vector<std::string> pngs = session_.context_heatmaps(query, samples, scale, body.value("edited", true));
      json images = json::array();
      for (size_t i = 0; i < samples.size(); ++i) {
        images.push_back({{"index", samples[i]}, {"png", "data:image/png;base64," + base64_encode(pngs[i])}});
      }
      send_json(res, {{"layer", query.layer}, {"rank", query.rank}, {"images", images}});
    });

    // Body: {"key": [...], "layer", "rank", "samples": "0-999", "top": 12}.
    http_.Post("/api/search", [this](const httplib::Request& req, httplib::Response& res) {
      json body = parse_json_body(req);
      serving::ContextQuery query = session_.parse_context_query(body);
      std::vector<int64_t> samples =
          samples_field(body, "samples", "0-999", static_cast<size_t>(options_.max_search_samples));
      json results = session_.search(query, samples, body.value("top", 12));
      send_json(res, {{"layer", query.layer}, {"searched", samples.size()}, {"results", results}});
    });

    http_.Get("/api/patch", [this](const httplib::Request&, httplib::Response& res) {
      std::string path = session_.last_patch_path();
      if (path.empty()) throw not_found("no edit is applied, so there is no patch to download: execute an edit first");
      res.set_header("Content-Disposition",
                     "attachment; filename=\"rankone-" + fs::path(path).filename().string() + "\"");
      res.set_content(read_file(path), "application/octet-stream");
    });
  }

  void register_edit_routes() {
    // Body: {"layer": n} (default: the model's default layer). 200 when ready, else 202 and a job.
    http_.Post("/api/statistics", [this](const httplib::Request& req, httplib::Response& res) {
      json body = req.body.empty() ? json::object() : parse_json_body(req);
      if (!body.is_object()) throw invalid_input("the body must be a JSON object");
      int layer = session_.original().default_layer();
      if (body.contains("layer") && !body["layer"].is_null()) {
        if (!body["layer"].is_number_integer()) throw invalid_input("'layer' must be an integer");
        layer = body["layer"].get<int>();
      }
      session_.original().layer(layer);  // throws for an unknown layer
      if (session_.statistics().ready(layer)) {
        send_json(res, {{"layer", layer}, {"ready", true}});
        return;
      }
      send_json(res, {{"layer", layer}, {"ready", false}, {"id", queue_statistics(layer)}}, 202);
    });

    http_.Post("/api/edit", [this](const httplib::Request& req, httplib::Response& res) {
      Request request = session_.prepare_request(parse_json_body(req));
      std::string id = worker_.start("edit", [this, request](const std::string& id, const ProgressCallback& progress) {
        return session_.run_edit(request, id, progress);
      });
      send_json(res, {{"id", id}, {"layer", *request.layer}}, 202);
    });

    http_.Get("/api/edit/status", [this](const httplib::Request&, httplib::Response& res) {
      json status = worker_.status();
      status.update(session_.stack_info());
      send_json(res, status);
    });

    http_.Post("/api/edit/cancel", [this](const httplib::Request&, httplib::Response& res) {
      worker_.cancel();
      send_json(res, worker_.status());
    });

    // The session itself rejects undo and revert while an edit runs, but a queued edit has not
    // reached the session yet, so the worker is asked first.
    http_.Post("/api/undo", [this](const httplib::Request&, httplib::Response& res) {
      reject_during_edit("undoing");
      send_json(res, session_.undo());
    });

    http_.Post("/api/revert", [this](const httplib::Request&, httplib::Response& res) {
      reject_during_edit("reverting");
      send_json(res, session_.revert());
    });
  }

  void reject_during_edit(const std::string& action) const {
    std::string id = worker_.active_job("edit");
    if (!id.empty()) {
      throw Error(ErrorKind::kConflict, "edit " + id + " is queued or running: wait for it or cancel it before " + action);
    }
  }

  void register_request_routes() {
    http_.Get("/api/requests", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, {{"requests", requests_.list()}});
    });

    http_.Get("/api/requests/([^/]+)", [this](const httplib::Request& req, httplib::Response& res) {
      res.set_content(requests_.read(req.matches[1].str()), "application/json");
    });

    http_.Put("/api/requests/([^/]+)", [this](const httplib::Request& req, httplib::Response& res) {
      std::string name = req.matches[1].str();
      serving::RequestStore::check_name(name);
      json body = parse_json_body(req);
      Request request = Request::from_json(body, "request '" + name + "'");
      requests_.write(name, request);
      spdlog::info("saved request '{}'", name);
      send_json(res, {{"saved", name}});
    });
  }

  void register_static_routes() {
    http_.Get("/.*", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.path.rfind("/api/", 0) == 0) throw not_found("unknown API route " + req.path);
      serving::StaticFile file = serving::resolve_static_file(options_.web_dir, req.path);
      if (file.status == 403) {
        send_error(req, res, 403, "path " + req.path.substr(0, 120) + " is outside the web folder");
        return;
      }
      if (file.status != 200) throw not_found("file " + req.path.substr(0, 120) + " not found");
      res.set_content(read_file(file.path), file.mime_type.c_str());
    });
  }

  std::string queue_statistics(int layer) {
    return worker_.start("statistics", [this, layer](const std::string&, const ProgressCallback& progress) {
      SecondMoment moment = session_.statistics().get(layer, progress);
      return json{{"layer", layer}, {"count", moment.count}, {"seconds", moment.seconds},
                  {"from_cache", moment.from_cache}};
    });
  }

  StudioOptions options_;
  serving::StudioSession session_;
  serving::RequestStore requests_;
  std::string error_prefix_;
  std::atomic<long> error_count_{0};
  serving::EditWorker worker_;
  httplib::Server http_;
  int port_ = -1;
  socket_t listen_socket_ = -1;

  // Whether stop() was called and whether listen() has started and returned, so that a stop
  // before the accept loop runs still ends listen().
  std::mutex listen_mutex_;
  bool stop_requested_ = false;
  bool listen_started_ = false;
  std::atomic<bool> listen_returned_{false};
};

StudioServer::StudioServer(const std::string& model, StudioOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(options))) {}

StudioServer::~StudioServer() { impl_->stop(); }

int StudioServer::bind() { return impl_->bind(); }

void StudioServer::listen() { impl_->listen(); }

void StudioServer::stop() { impl_->stop(); }

std::string StudioServer::url() const { return impl_->url(); }

}  // namespace rankone

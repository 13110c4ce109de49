// The serve subcommand: the rewriting studio (HTTP server and browser page).
#include "cli_common.h"

#include "rankone/error.h"
#include "rankone/rewriting/statistics.h"
#include "rankone/serving/studio_server.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace rankone::cli {

namespace {

// Self-pipe between the signal handler and the watcher thread: the handler only writes the
// signal number, which is async-signal-safe, whichever thread the signal lands on.
int shutdown_pipe[2] = {-1, -1};

extern "C" void on_shutdown_signal(int signal_number) {
  unsigned char byte = static_cast<unsigned char>(signal_number);
  ssize_t written = write(shutdown_pipe[1], &byte, 1);
  (void)written;  // a full pipe already contains a pending stop request
}

// Installs the SIGINT and SIGTERM handlers. SIGINT is taken over even where the shell started
// the studio in the background with SIGINT ignored.
void install_shutdown_handlers() {
  if (pipe(shutdown_pipe) != 0) throw Error(ErrorKind::kInternal, "cannot create the shutdown pipe");
  fcntl(shutdown_pipe[1], F_SETFL, fcntl(shutdown_pipe[1], F_GETFL) | O_NONBLOCK);
  struct sigaction action = {};
  action.sa_handler = on_shutdown_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

// Stops `server` on the first SIGINT or SIGTERM; a second one exits at once. A zero byte from
// the main thread ends the watcher.
std::thread watch_signals(StudioServer& server) {
  return std::thread([&server] {
    bool stopping = false;
    for (;;) {
      unsigned char byte = 0;
      ssize_t count = read(shutdown_pipe[0], &byte, 1);
      if (count < 0 && errno == EINTR) continue;
      if (count <= 0 || byte == 0) return;
      if (stopping) {
        spdlog::warn("received {} again: exiting without waiting for the running job", strsignal(byte));
        std::_Exit(130);
      }
      stopping = true;
      spdlog::info("received {}: stopping (send it again to exit at once)", strsignal(byte));
      server.stop();
    }
  });
}

}  // namespace

void add_serve_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    StudioOptions studio;
    int64_t stats_samples = 1000;
    int64_t stats_batch = 0;
    std::string cache_dir = statistics_cache_dir();
    bool no_cache = false;
    double max_body_mib = 16;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand("serve", "run the rewriting studio: a browser page to paint, copy, paste "
                                                  "and rewrite, served over HTTP");
  add_model_options(command, options->model);
  command->add_option("--host", options->studio.host,
                      "address to listen on; anything but a loopback address exposes the studio to the network")
      ->capture_default_str();
  command->add_option("--port", options->studio.port, "TCP port; 0 picks a free one and prints it")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  command->add_option("--data", options->studio.data_dir, "folder for saved requests and patches")
      ->capture_default_str();
  command->add_option("--web", options->studio.web_dir, "folder of the page (default: web/ of the source tree)");
  command->add_option("--stats-samples", options->stats_samples, "samples for each layer's key statistics")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  command->add_option("--stats-batch", options->stats_batch,
                      "samples per batch for the statistics; 0 picks 10 with reference noise, else 50")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{4096}));
  command->add_option("--cache-dir", options->cache_dir, "statistics cache folder (default: $RANKONE_CACHE)")
      ->capture_default_str();
  command->add_flag("--no-cache", options->no_cache, "compute statistics without reading or writing the cache");
  command->add_option("--sample-count", options->studio.sample_count, "samples the studio serves: 0 to N - 1")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 31));
  command->add_option("--max-body", options->max_body_mib, "largest request body, in MiB")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 1024.0));

  command->callback([options] {
    // Parse: settings the library checks itself are validated when the server starts.
    StudioOptions studio = options->studio;
    studio.sampling = sampling_from(options->model);
    studio.statistics = {options->stats_samples, options->stats_batch};
    studio.cache_dir = options->no_cache ? "" : options->cache_dir;
    studio.max_body_bytes = static_cast<size_t>(options->max_body_mib * 1024 * 1024);

    int threads = options->model.threads > 0 ? options->model.threads
                                             : static_cast<int>(std::thread::hardware_concurrency());
    at::set_num_threads(std::max(1, threads));

    // Load the model, start the worker and register the routes.
    StudioServer server(options->model.model, studio);

    // Bind, then take over SIGINT and SIGTERM. Until here a signal takes its default action,
    // which is right while there is nothing to shut down.
    server.bind();
    install_shutdown_handlers();
    std::thread watcher = watch_signals(server);

    // Print the URL (on stdout too, for scripts that start the studio). A script may signal
    // the studio as soon as it reads the URL, so the handlers are in place before it appears.
    spdlog::info("studio listening on {} (model {}, data in {})", server.url(), options->model.model,
                 studio.data_dir);
    std::printf("rankone studio: %s\n", server.url().c_str());
    std::fflush(stdout);

    // Listen until a signal stops the server.
    server.listen();
    const unsigned char end_watcher = 0;
    ssize_t written = write(shutdown_pipe[1], &end_watcher, 1);
    (void)written;
    watcher.join();
    server.stop();
    spdlog::info("studio stopped");
  });
}

}  // namespace rankone::cli

// rankone: rewrite the rules of a pretrained image generator.
#include "cli_common.h"

#include "rankone/error.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>

int main(int argc, char** argv) {
  CLI::App app{"rankone " RANKONE_VERSION ": rewrite a rule of a pretrained image generator by a low-rank "
               "update of one convolution layer (Bau et al., \"Rewriting a Deep Generative Model\", ECCV 2020)."};
  app.set_version_flag("--version", std::string("rankone ") + RANKONE_VERSION);
  app.require_subcommand(1);
  app.fallthrough();
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "print debug logs");

  rankone::cli::add_fetch_command(app);
  rankone::cli::add_info_command(app);
  rankone::cli::add_sample_command(app);
  rankone::cli::add_rewriting_commands(app);
  rankone::cli::add_serve_command(app);

  auto logger = spdlog::stderr_color_mt("rankone");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");
  app.parse_complete_callback([&] { spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\nrun `%s --help` for usage\n", e.what(), argv[0]);
    return 2;
  } catch (const rankone::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: libtorch: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

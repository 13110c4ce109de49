#include "test_support.h"

#include "rankone/models/model_store.h"

#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

namespace rankone::testing {

namespace fs = std::filesystem;

std::string fixtures_dir() {
  if (const char* env = std::getenv("RANKONE_FIXTURES")) {
    if (fs::is_directory(env)) return env;
  }
  fs::path beside = fs::path(rankone::source_dir()).parent_path() / "shared" / "fixtures";
  if (fs::is_directory(beside)) return beside.string();
  return "";
}

std::string test_data_dir() { return RANKONE_TEST_DATA_DIR; }

namespace {
struct TempRoot {
  fs::path path;
  TempRoot() {
    path = fs::temp_directory_path() / ("rankone-test-" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempRoot() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};
}  // namespace

std::string temp_dir() {
  static TempRoot root;
  static int counter = 0;
  fs::path dir = root.path / std::to_string(counter++);
  fs::create_directories(dir);
  return dir.string();
}

StyleGAN2Config small_stylegan2_config() {
  StyleGAN2Config config;
  config.resolution = 32;
  config.style_size = 16;
  config.mapping_layers = 2;
  config.channels = {{4, 16}, {8, 16}, {16, 12}, {32, 8}};
  return config;
}

}  // namespace rankone::testing

// A process killed with SIGKILL while it saves over an existing file must leave that file as it
// was: saves write a temporary file beside the target and rename it into place. The child
// process saves a large tensor, the parent kills it as soon as the temporary file appears,
// then checks the target and the folder.
#include "rankone/formats/image.h"
#include "rankone/formats/tensor_file.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

namespace rankone {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Names of the temporary files of a save of `target` present in its folder.
std::vector<std::string> temporary_files(const std::string& target) {
  std::string prefix = "." + fs::path(target).filename().string() + ".";
  std::vector<std::string> found;
  for (const fs::directory_entry& entry : fs::directory_iterator(fs::path(target).parent_path())) {
    std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      found.push_back(name);
    }
  }
  return found;
}

struct KillOutcome {
  bool killed_mid_save = false;  // the temporary file existed when the child was killed
  bool child_finished = false;   // the child exited before it could be killed
};

// Forks a child that runs `save` (then exits 0), kills it with SIGKILL once a temporary file of
// `target` appears, and waits for it. Gives up waiting after 20 s.
KillOutcome kill_during(const std::string& target, const std::function<void()>& save) {
  pid_t child = ::fork();
  if (child == 0) {
    at::set_num_threads(1);
    try {
      save();
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(0);
  }
  EXPECT_GT(child, 0) << "fork failed";

  KillOutcome outcome;
  auto deadline = Clock::now() + std::chrono::seconds(20);
  int status = 0;
  while (Clock::now() < deadline) {
    if (!temporary_files(target).empty()) {
      ::kill(child, SIGKILL);
      outcome.killed_mid_save = true;
      break;
    }
    if (::waitpid(child, &status, WNOHANG) == child) {
      outcome.child_finished = true;
      return outcome;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (!outcome.killed_mid_save) ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL) << "status " << status;
  return outcome;
}

TEST(KillDuringSave, SafetensorsKeepsPreviousFile) {
  std::string target = testing::temp_dir() + "/weights.safetensors";
  // Small enough that the parent's save runs on one thread before the fork.
  save_safetensors(target, {{"w", at::arange(16, at::kFloat)}}, {{"version", "previous"}});
  std::string previous = read_bytes(target);

  // 256 MiB takes long enough to write and flush that the kill lands inside the save.
  KillOutcome outcome = kill_during(target, [&] {
    save_safetensors(target, {{"w", at::ones({64 << 20}, at::kFloat)}}, {{"version", "next"}});
  });
  ASSERT_FALSE(outcome.child_finished) << "the save finished before the kill; the test did not test anything";
  EXPECT_TRUE(outcome.killed_mid_save);

  EXPECT_EQ(read_bytes(target), previous) << "the target was changed by a killed save";
  TensorFile file = load_tensor_file(target);
  EXPECT_EQ(file.metadata.at("version"), "previous");
  EXPECT_TRUE(at::equal(file.get("w"), at::arange(16, at::kFloat)));
  // The killed save may leave its temporary file, but never under the target's name.
  for (const std::string& name : temporary_files(target)) EXPECT_NE(name, fs::path(target).filename().string());
}

TEST(KillDuringSave, AtomicWriteKeepsPreviousFile) {
  std::string target = testing::temp_dir() + "/report.json";
  write_file_atomic(target, "{\"version\": \"previous\"}\n");
  std::string previous = read_bytes(target);

  KillOutcome outcome = kill_during(target, [&] { write_file_atomic(target, std::string(512u << 20, 'x')); });
  ASSERT_FALSE(outcome.child_finished) << "the write finished before the kill; the test did not test anything";
  EXPECT_TRUE(outcome.killed_mid_save);
  EXPECT_EQ(read_bytes(target), previous);
}

}  // namespace
}  // namespace rankone

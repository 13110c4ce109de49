#include "formats/file_io.h"

#include "rankone/error.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace rankone::formats {

namespace fs = std::filesystem;

std::string read_file_bytes(const std::string& path) {
  std::error_code status_error;
  fs::file_status status = fs::status(path, status_error);
  if (!fs::exists(status)) {
    throw not_found(path + ": file not found (check the path)");
  }
  if (fs::is_directory(status)) {
    throw invalid_input(path + ": is a folder, not a file (pass the weights file inside it)");
  }

  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw invalid_input(path + ": cannot open the file for reading: " + std::strerror(errno) +
                        " (check its permissions)");
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) {
    throw invalid_input(path + ": reading the file failed: " + std::strerror(errno));
  }
  return std::move(buffer).str();
}

namespace {

Error io_error(const std::string& path, const std::string& failure, int error_number) {
  return Error(ErrorKind::kInternal, path + ": " + failure + ": " + std::strerror(error_number) +
                                         " (check free disk space and folder permissions)");
}

// Writes all of `bytes` to `fd`, retrying short writes and interrupted calls.
// Returns 0 on success, else the errno value of the failed call.
int write_all(int fd, const std::string& bytes) {
  size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
    written += static_cast<size_t>(n);
  }
  return 0;
}

// Returns the process umask from /proc/self/status, or 077 when it cannot be read.
// NOTE: umask() itself cannot be read without setting it, which races with other threads.
mode_t current_umask() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
  }
  return 077;
}

}  // namespace

void write_file_atomically(const std::string& path, const std::string& bytes) {
  fs::path target(path);
  fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ignored;
  if (!fs::is_directory(folder, ignored)) {
    throw not_found(path + ": the folder " + folder.string() + " does not exist (create it first)");
  }
  if (fs::is_directory(target, ignored)) {
    throw invalid_input(path + ": is a folder: give the name of the file to write");
  }

  // The temporary name starts with a dot and ends in .tmp, so `ls` and shell globs skip it.
  std::string temp_path = (folder / ("." + target.filename().string() + ".XXXXXX.tmp")).string();
  int fd = ::mkstemps(temp_path.data(), 4);
  if (fd < 0) throw io_error(path, "cannot create a temporary file in " + folder.string(), errno);

  // mkstemps creates the file with mode 0600, so give it the mode that open() would give a new file.
  ::fchmod(fd, 0666 & ~current_umask());

  int error_number = write_all(fd, bytes);
  if (error_number == 0 && ::fsync(fd) != 0) error_number = errno;
  if (::close(fd) != 0 && error_number == 0) error_number = errno;
  if (error_number == 0 && ::rename(temp_path.c_str(), path.c_str()) != 0) error_number = errno;
  if (error_number == 0) return;

  ::unlink(temp_path.c_str());
  throw io_error(path, "writing the file failed", error_number);
}

}  // namespace rankone::formats

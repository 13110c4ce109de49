#include "serving/request_store.h"

#include "rankone/error.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace rankone::serving {

namespace fs = std::filesystem;

namespace {
constexpr size_t kMaxNameLength = 64;
}

RequestStore::RequestStore(std::string folder) : folder_(std::move(folder)) {
  std::error_code error;
  fs::create_directories(folder_, error);
  if (error || !fs::is_directory(folder_)) {
    throw Error(ErrorKind::kInternal, "cannot create the requests folder " + folder_ + ": " + error.message());
  }
}

void RequestStore::check_name(const std::string& name) {
  bool valid = !name.empty() && name.size() <= kMaxNameLength &&
               std::all_of(name.begin(), name.end(), [](char c) {
                 return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                        c == '_';
               });
  if (!valid) {
    throw invalid_input("invalid request name '" + name.substr(0, kMaxNameLength) +
                        "': use 1 to 64 letters, digits, '-' or '_'");
  }
}

std::string RequestStore::path_of(const std::string& name) const {
  check_name(name);
  return (fs::path(folder_) / (name + ".json")).string();
}

std::vector<std::string> RequestStore::list() const {
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder_)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".json") continue;
    std::string name = entry.path().stem().string();
    try {
      check_name(name);
      names.push_back(name);
    } catch (const Error&) {
      // Files the studio did not write (other names) are not listed.
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string RequestStore::read(const std::string& name) const {
  std::string path = path_of(name);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw not_found("saved request '" + name + "' not found");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void RequestStore::write(const std::string& name, const Request& request) const {
  save_request(path_of(name), request);
}

}  // namespace rankone::serving

// Saved edit requests of the studio: one JSON file per name in a folder, each
// written atomically so that a crash while saving leaves the old file intact.
#pragma once

#include "rankone/rewriting/request.h"

#include <string>
#include <vector>

namespace rankone::serving {

class RequestStore {
 public:
  /// Creates `folder` when missing. Throws an internal Error when it cannot.
  explicit RequestStore(std::string folder);

  /// Throws an invalid-input Error unless `name` is 1 to 64 letters, digits, '-' or '_'.
  static void check_name(const std::string& name);

  /// Names of the saved requests, sorted.
  std::vector<std::string> list() const;
  /// The saved JSON text of `name`. Throws a not-found Error when there is none.
  std::string read(const std::string& name) const;
  /// Saves `request` as `name`, replacing any earlier one (temporary file, then rename).
  void write(const std::string& name, const Request& request) const;

 private:
  std::string path_of(const std::string& name) const;

  std::string folder_;
};

}  // namespace rankone::serving

// Exception types of the rankone library: every failure carries a kind that
// programs map to an exit code or an HTTP status.
#pragma once

#include <stdexcept>
#include <string>

namespace rankone {

enum class ErrorKind {
  kInvalidInput,  // bad file, value or request (HTTP 400)
  kNotFound,      // a named file, sample, layer or request is missing (HTTP 404)
  kConflict,      // the operation clashes with running work (HTTP 409)
  kInternal,      // a bug or an environment failure (HTTP 500)
};

/// A library error whose message names the component, the bad value and the fix.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

inline Error invalid_input(const std::string& message) { return Error(ErrorKind::kInvalidInput, message); }
inline Error not_found(const std::string& message) { return Error(ErrorKind::kNotFound, message); }

}  // namespace rankone

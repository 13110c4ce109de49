// Whole-file reads and atomic writes shared by the file format readers and writers.
#pragma once

#include <cstdint>
#include <string>

namespace rankone::formats {

/// Reads the whole file into memory. Throws a not-found Error when the file does not exist
/// and an invalid-input Error when it is a folder or cannot be read.
std::string read_file_bytes(const std::string& path);

/// Writes `bytes` to a temporary file in the folder of `path`, flushes it to disk and renames it
/// over `path`. On failure the temporary file is removed and `path` is left as it was.
/// Throws a not-found Error when the folder does not exist and an internal Error on I/O failure.
void write_file_atomically(const std::string& path, const std::string& bytes);

/// Reads a little-endian unsigned integer of `size` bytes (at most 8) at `data`.
inline uint64_t read_little_endian(const char* data, int size) {
  uint64_t value = 0;
  for (int i = size - 1; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(data[i]);
  return value;
}

}  // namespace rankone::formats

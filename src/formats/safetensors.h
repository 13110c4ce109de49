// Internal helpers of the safetensors reader, used by the format detection in tensor_file.cc.
#pragma once

#include <cstdint>
#include <string>

namespace rankone::formats {

/// Largest safetensors JSON header accepted, in bytes. Real headers are a few hundred
/// bytes per tensor, so this allows several hundred thousand tensors.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

/// Whether `bytes` starts like a safetensors file: an 8-byte header length followed by '{'.
bool looks_like_safetensors(const std::string& bytes);

}  // namespace rankone::formats

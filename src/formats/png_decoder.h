// PNG decoding with a bound on every allocation, for untrusted images such as request masks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rankone::formats {

/// Largest single allocation the decoder may make, in bytes.
constexpr size_t kMaxPngAllocation = size_t(256) << 20;

struct DecodedPng {
  int width = 0, height = 0;
  std::vector<uint8_t> rgba;  // width * height * 4 bytes
};

/// Decodes `bytes` to 8-bit RGBA. Returns false with `failure` set (stb_image's reason) when
/// the data is not a valid PNG, or when decoding would allocate more than kMaxPngAllocation at
/// once, as a small compressed stream that inflates far beyond its header's size does.
bool decode_png_bounded(const std::string& bytes, DecodedPng& out, std::string& failure);

}  // namespace rankone::formats

// Fuzzes mask data URLs. The first byte picks the mode. Even values send the rest as the URL
// text. Odd values base64-encode the rest as the PNG bytes of a well-formed URL, so that the
// fuzzer reaches the PNG decoder without having to discover base64. Decoded masks are resized
// as a request's masks are.
#include "rankone/error.h"
#include "rankone/rewriting/masks.h"

#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string url = (data[0] & 1) ? "data:image/png;base64," + rankone::base64_encode(rest) : rest;
  try {
    torch::Tensor mask = rankone::decode_mask_url(url, "fuzz mask");
    torch::Tensor small = rankone::resize_mask(mask, 8, 8);
    (void)rankone::mask_bounds(small);
  } catch (const rankone::Error&) {
  }
  return 0;
}

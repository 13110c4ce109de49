// Fuzzes edit request parsing: JSON text to Request::from_json, then back to JSON.
#include "rankone/error.h"
#include "rankone/rewriting/request.h"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    rankone::Request request = rankone::Request::from_json(j, "fuzz.json");
    (void)request.to_json().dump();
  } catch (const rankone::Error&) {
  }
  return 0;
}

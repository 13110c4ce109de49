// Fuzzes the restricted pickle reader. Any exception other than rankone::Error escapes and
// libFuzzer reports it as a crash, because read_pickle promises invalid-input Errors only.
#include "formats/pickle.h"
#include "rankone/error.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    rankone::formats::PickleDocument document = rankone::formats::read_pickle(bytes, "fuzz.pkl");
    (void)document.root().to_text();
    for (const rankone::formats::PickleStorage* storage : document.storages()) (void)storage->key.size();
  } catch (const rankone::Error&) {
  }
  return 0;
}

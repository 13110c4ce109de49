// Hostile and broken input files (tests/hostile/, written by make_hostile.py there): each must be
// rejected with an invalid-input Error whose message names the problem. Inputs that need the
// bundled model are checked through the CLI in tests/cli/hostile_inputs.sh.
#include "rankone/models/model_store.h"
#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/generator.h"
#include "rankone/models/latents.h"
#include "rankone/rewriting/masks.h"
#include "rankone/rewriting/patch.h"
#include "rankone/rewriting/request.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

namespace rankone {
namespace {

namespace fs = std::filesystem;

std::string hostile_dir() { return fs::path(source_dir()) / "tests" / "hostile"; }

enum class Reader { kTensorFile, kModel, kPatch, kRequest };

struct HostileCase {
  const char* file;
  Reader reader;
  const char* expected;  // a substring of the error message
};

// Runs `reader` on `path` and returns the message of the rankone::Error it throws, or "" when
// it throws none. Any other exception fails the test.
std::string error_of(Reader reader, const std::string& path, ErrorKind* kind) {
  try {
    switch (reader) {
      case Reader::kTensorFile:
        load_tensor_file(path);
        break;
      case Reader::kModel:
        load_generator(path);
        break;
      case Reader::kPatch:
        load_patch(path);
        break;
      case Reader::kRequest:
        load_request(path);
        break;
    }
  } catch (const Error& e) {
    *kind = e.kind();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-rankone exception: " << e.what();
    return "";
  }
  return "";
}

TEST(HostileInputs, RejectedWithClearMessages) {
  const HostileCase cases[] = {
      // pickles that name code to run
      {"pickle_os_system.pt", Reader::kTensorFile, "pickle global 'os.system'"},
      {"pickle_builtins_eval.pt", Reader::kTensorFile, "pickle global 'builtins.eval'"},
      {"pickle_subprocess_in_legacy.pt", Reader::kTensorFile, "pickle global 'subprocess.check_output'"},
      // archives and checkpoints whose sizes lie
      {"zip_bomb_deflate.pt", Reader::kTensorFile, "is compressed (method 8)"},
      {"zip_lying_size.pt", Reader::kTensorFile, "truncated zip archive"},
      {"zip_tensor_past_storage.pt", Reader::kTensorFile, "reaches past the end of its storage"},
      {"legacy_lying_count.pt", Reader::kTensorFile, "truncated checkpoint"},
      {"safetensors_huge_header.safetensors", Reader::kTensorFile, "exceeds the maximum"},
      {"safetensors_lying_offsets.safetensors", Reader::kTensorFile, "beyond the 8 bytes of data"},
      {"safetensors_shape_overflow.safetensors", Reader::kTensorFile, "more than 2^64"},
      // non-finite weights
      {"tiny_nan.json", Reader::kModel, "contains NaN or infinite values"},
      {"tiny_inf.json", Reader::kModel, "contains NaN or infinite values"},
      {"patch_inf.safetensors", Reader::kPatch, "patch contains NaN or infinite values"},
      // requests with broken masks and values
      {"request_empty_mask.json", Reader::kRequest, "is empty (paint some pixels white)"},
      {"request_mask_too_large.json", Reader::kRequest, "8193x1 pixels is out of range"},
      {"request_png_inflate_bomb.json", Reader::kRequest, "decompresses to more than its 256x256 pixels need"},
      {"request_negative_image.json", Reader::kRequest, "image number -1 is negative"},
      {"request_broken_base64.json", Reader::kRequest, "invalid base64 data"},
      {"request_not_png.json", Reader::kRequest, "not a PNG image"},
      {"request_truncated_png.json", Reader::kRequest, "PNG"},
      {"request_jpeg_url.json", Reader::kRequest, "mask must be a data URL starting with 'data:image/png;base64,'"},
      {"request_rank_huge.json", Reader::kRequest, "rank 100000 out of range 1 to 64"},
  };
  for (const HostileCase& c : cases) {
    SCOPED_TRACE(c.file);
    std::string path = hostile_dir() + "/" + c.file;
    ASSERT_TRUE(fs::exists(path)) << "run tests/hostile/make_hostile.py";
    ErrorKind kind = ErrorKind::kInternal;
    std::string message = error_of(c.reader, path, &kind);
    ASSERT_FALSE(message.empty()) << "accepted";
    EXPECT_EQ(kind, ErrorKind::kInvalidInput) << message;
    EXPECT_NE(message.find(c.expected), std::string::npos) << message;
    // A model card's errors may name its weights file, which shares the card's stem.
    std::string stem = fs::path(c.file).stem().string();
    EXPECT_NE(message.find(stem), std::string::npos) << "the message does not name the file: " << message;
  }
}

TEST(HostileInputs, HugeSampleRangesRejected) {
  const std::pair<const char*, const char*> cases[] = {
      {"0-99999999999", "is not a non-negative integer"},
      {"0-4294967295", "more than 100000 samples"},
      {"0-50000,0-50000", "more than 100000 samples"},
      {"4294967296", "above the largest index 4294967295"},
      {"5-1", "runs backwards"},
      {"", "is not a non-negative integer"},
      {"1,,2", "is not a non-negative integer"},
  };
  for (const auto& [text, expected] : cases) {
    SCOPED_TRACE(text);
    try {
      parse_sample_indices(text);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
}

TEST(HostileInputs, BrokenDataUrlsRejected) {
  const std::pair<std::string, const char*> cases[] = {
      {"", "mask must be a data URL"},
      {"data:image/png;base64,", "not a PNG image"},
      {"data:image/png;base64,====", "not a PNG image"},
      {"data:image/png;base64,iVBORw0KGgo=", "unreadable PNG header"},
      {"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", "PNG"},
      {"data:text/html;base64,PHNjcmlwdD4=", "mask must be a data URL"},
      {std::string("data:image/png;base64,iVBOR\0w0KGgo", 34), "invalid base64 data"},
  };
  for (const auto& [url, expected] : cases) {
    SCOPED_TRACE(url.substr(0, 40));
    try {
      decode_mask_url(url, "mask");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace rankone

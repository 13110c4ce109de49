#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace rankone {
namespace {

namespace fs = std::filesystem;

// Builds a safetensors byte string from a header text and raw data.
std::string make_safetensors(const std::string& header, const std::string& data = "") {
  std::string bytes;
  uint64_t size = header.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((size >> (8 * i)) & 0xff));
  return bytes + header + data;
}

// Returns the message of the Error that parse_safetensors throws, or "" when it throws none.
std::string parse_error(const std::string& bytes) {
  try {
    parse_safetensors(bytes, "test.safetensors");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
    return e.what();
  }
  return "";
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(Safetensors, ParsesMinimalFile) {
  std::string data(8, '\0');
  float values[2] = {1.5f, -2.0f};
  std::memcpy(data.data(), values, 8);
  TensorFile file = parse_safetensors(
      make_safetensors(R"({"__metadata__":{"a":"b"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data),
      "mem");

  EXPECT_EQ(file.format, TensorFileFormat::kSafetensors);
  ASSERT_EQ(file.names, std::vector<std::string>{"w"});
  EXPECT_EQ(file.metadata.at("a"), "b");
  const at::Tensor& w = file.get("w");
  EXPECT_EQ(w.scalar_type(), at::kFloat);
  EXPECT_EQ(w.sizes(), at::IntArrayRef({2}));
  EXPECT_EQ(w[0].item<float>(), 1.5f);
  EXPECT_EQ(w[1].item<float>(), -2.0f);
}

TEST(Safetensors, KeepsHeaderOrder) {
  TensorFile file = parse_safetensors(
      make_safetensors(R"({"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                       "xy"),
      "mem");
  EXPECT_EQ(file.names, (std::vector<std::string>{"z", "a"}));
  EXPECT_EQ(file.get("a").item<uint8_t>(), 'y');
}

TEST(Safetensors, WidensUnsigned32To64) {
  std::string data = std::string("\xff\xff\xff\xff", 4) + std::string("\x01\x00\x00\x00", 4);
  TensorFile file =
      parse_safetensors(make_safetensors(R"({"u":{"dtype":"U32","shape":[2],"data_offsets":[0,8]}})", data), "mem");
  const at::Tensor& u = file.get("u");
  EXPECT_EQ(u.scalar_type(), at::kLong);
  EXPECT_EQ(u[0].item<int64_t>(), 4294967295LL);
  EXPECT_EQ(u[1].item<int64_t>(), 1);
}

TEST(Safetensors, AcceptsEmptyTensor) {
  TensorFile file = parse_safetensors(
      make_safetensors(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},)"
                       R"("s":{"dtype":"I8","shape":[],"data_offsets":[0,1]}})",
                       "\x07"),
      "mem");
  EXPECT_EQ(file.get("e").numel(), 0);
  EXPECT_EQ(file.get("s").dim(), 0);
  EXPECT_EQ(file.get("s").item<int8_t>(), 7);
}

TEST(Safetensors, GetNamesMissingTensor) {
  TensorFile file = parse_safetensors(make_safetensors("{}"), "weights.safetensors");
  try {
    file.get("conv.weight");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weights.safetensors: tensor 'conv.weight' not found"), std::string::npos)
        << e.what();
  }
}

TEST(Safetensors, RejectsBadInput) {
  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  std::string huge_length("\x00\x00\x00\x40\x00\x00\x00\x00", 8);  // 1 GiB header
  std::string long_length = make_safetensors(std::string(64, ' ')).substr(0, 40);
  const Case cases[] = {
      {"shorter than length", "abc", "shorter than the 8-byte header length"},
      {"header too large", huge_length + "{}", "exceeds the maximum of 104857600 bytes"},
      {"header past end", long_length, "truncated safetensors file: the header length is 64 bytes but only 32"},
      {"invalid json", make_safetensors("{\"w\": "), "not valid JSON"},
      {"not an object", make_safetensors("[1, 2]"), "not a JSON object"},
      {"duplicate name", make_safetensors(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},)"
                                          R"("w":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})"),
       "tensor 'w' appears twice"},
      {"unknown dtype", make_safetensors(R"({"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", "x"),
       "unsupported dtype 'F8_E4M3'"},
      {"missing dtype", make_safetensors(R"({"w":{"shape":[1],"data_offsets":[0,1]}})", "x"), "has no dtype"},
      {"negative dim", make_safetensors(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "x"),
       "not a non-negative integer"},
      {"size mismatch", make_safetensors(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678"),
       "needs 12 bytes, but its data_offsets span 8"},
      {"shape overflow",
       make_safetensors(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", "12345678"),
       "more than 2^64"},
      {"offsets past data", make_safetensors(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", "1234"),
       "beyond the 4 bytes of data"},
      {"offsets reversed", make_safetensors(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[3,2]}})", "1234"),
       "begin after end"},
      {"offsets not pair", make_safetensors(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "1"),
       "no data_offsets pair"},
      {"overlap", make_safetensors(R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                                   R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                                   "1234"),
       "tensors 'a' and 'b' have overlapping data_offsets"},
      {"metadata not string", make_safetensors(R"({"__metadata__":{"epoch":3}})"),
       "__metadata__ value of 'epoch' is number"},
      {"metadata not object", make_safetensors(R"({"__metadata__":"x"})"), "__metadata__ is not an object"},
      {"bad bool", make_safetensors(R"({"b":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", "\x01\x02"),
       "contains the byte 2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string message = parse_error(c.bytes);
    EXPECT_NE(message.find("test.safetensors: "), std::string::npos) << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(Safetensors, RoundTripIsBitExact) {
  at::manual_seed(0);
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f64", at::randn({3, 2}, at::kDouble)},
      {"f32", at::randn({2, 3, 4})},
      {"f16", at::randn({5}).to(at::kHalf)},
      {"bf16", at::randn({5}).to(at::kBFloat16)},
      {"i64", at::randint(-1000, 1000, {4}, at::kLong)},
      {"i32", at::randint(-1000, 1000, {4}, at::kInt)},
      {"i16", at::randint(-1000, 1000, {4}, at::kShort)},
      {"i8", at::randint(-100, 100, {4}, at::kChar)},
      {"u8", at::randint(0, 255, {4}, at::kByte)},
      {"bool", at::randint(0, 2, {3}, at::kLong).to(at::kBool)},
      {"scalar", at::scalar_tensor(3.25)},
      {"empty", at::empty({0, 7})},
      {"strided", at::randn({4, 6}).t()},
  };
  std::map<std::string, std::string> metadata = {{"layer", "layer6"}, {"note", "quote \" and \xc3\xa9"}};
  std::string folder = testing::temp_dir();
  std::string path = folder + "/patch.safetensors";
  save_safetensors(path, tensors, metadata);

  TensorFile file = load_tensor_file(path);
  EXPECT_EQ(file.metadata, metadata);
  ASSERT_EQ(file.names.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ(file.names[i], tensors[i].first);
    const at::Tensor& loaded = file.get(tensors[i].first);
    EXPECT_EQ(loaded.scalar_type(), tensors[i].second.scalar_type());
    EXPECT_EQ(loaded.sizes(), tensors[i].second.sizes());
    // Compares bytes, so NaN payloads and signed zeros count too.
    at::Tensor expected = tensors[i].second.contiguous();
    ASSERT_EQ(loaded.nbytes(), expected.nbytes());
    EXPECT_EQ(std::memcmp(loaded.data_ptr(), expected.data_ptr(), expected.nbytes()), 0);
  }

  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(folder)) left.push_back(entry.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"patch.safetensors"});
}

TEST(Safetensors, SavePadsHeaderToEightBytes) {
  std::string path = testing::temp_dir() + "/pad.safetensors";
  save_safetensors(path, {{"x", at::ones({1})}});
  std::string bytes = read_bytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_size + 4);
}

TEST(Safetensors, SaveReplacesExistingFile) {
  std::string path = testing::temp_dir() + "/w.safetensors";
  write_bytes(path, "old contents");
  save_safetensors(path, {{"x", at::ones({2})}});
  EXPECT_EQ(load_tensor_file(path).get("x").numel(), 2);
}

TEST(Safetensors, SaveRejectsBadTensors) {
  std::string folder = testing::temp_dir();
  std::string path = folder + "/bad.safetensors";
  struct Case {
    const char* name;
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    const char* message;
  };
  const Case cases[] = {
      {"complex", {{"c", at::zeros({2}, at::kComplexFloat)}}, "of dtype ComplexFloat"},
      {"duplicate", {{"a", at::ones({1})}, {"a", at::ones({1})}}, "two tensors named 'a'"},
      {"empty name", {{"", at::ones({1})}}, "tensor named ''"},
      {"metadata name", {{"__metadata__", at::ones({1})}}, "tensor named '__metadata__'"},
      {"undefined", {{"u", at::Tensor()}}, "'u' because it is undefined"},
      {"invalid utf8 name", {{"bad\xff", at::ones({1})}}, "is not valid UTF-8"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    try {
      save_safetensors(path, c.tensors);
      ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(fs::is_empty(folder));
}

TEST(Safetensors, SaveIntoMissingFolderFails) {
  std::string path = testing::temp_dir() + "/no/such/folder/w.safetensors";
  try {
    save_safetensors(path, {{"x", at::ones({1})}});
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, LoadsFixtureGenerator) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  TensorFile file = load_tensor_file(folder + "/generator.safetensors");
  EXPECT_EQ(file.format, TensorFileFormat::kSafetensors);
  EXPECT_EQ(file.names.size(), 92u);
  EXPECT_EQ(file.get("g_ema.convs.3.conv.weight").sizes(), at::IntArrayRef({1, 64, 64, 3, 3}));
  EXPECT_EQ(file.get("latent_avg").sizes(), at::IntArrayRef({64}));
}

TEST(Safetensors, LoadsFixtureStreams) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  TensorFile file = load_tensor_file(folder + "/streams.safetensors");
  EXPECT_FALSE(file.metadata.empty());
  // U32 tensors are widened to int64 and must equal the file's own int64 copies.
  EXPECT_TRUE(at::equal(file.get("mt19937_seed1_uint32_first10"), file.get("mt19937_seed1_uint32_first10_i64")));
  EXPECT_TRUE(at::equal(file.get("mt19937_seed1_state_after_seeding_u32"),
                        file.get("mt19937_seed1_state_after_seeding_i64")));
}

TEST(Safetensors, TruncatedFixtureFails) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  std::string bytes = read_bytes(folder + "/generator.safetensors");
  ASSERT_GT(bytes.size(), 1000u);
  std::string path = testing::temp_dir() + "/cut.safetensors";
  for (size_t cut : {size_t{4}, size_t{9}, size_t{200}, bytes.size() / 2, bytes.size() - 1}) {
    SCOPED_TRACE(cut);
    write_bytes(path, bytes.substr(0, cut));
    try {
      load_tensor_file(path);
      ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
      std::string message = e.what();
      EXPECT_NE(message.find(path), std::string::npos) << message;
      EXPECT_NE(message.find("truncated"), std::string::npos) << message;
    }
  }
}

TEST(Safetensors, SurvivesCorruptedHeader) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  std::string original = read_bytes(folder + "/generator.safetensors");
  uint64_t header_size = 0;
  std::memcpy(&header_size, original.data(), 8);
  ASSERT_LT(header_size, original.size());
  std::mt19937 random(5);
  int rejected = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::string bytes = original;
    for (int flips = 0; flips < 2; ++flips) bytes[random() % (8 + header_size)] = static_cast<char>(random() & 0xff);
    // Each corrupted file either parses or raises rankone::Error naming it, never anything else.
    try {
      parse_safetensors(bytes, "corrupt.safetensors");
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find("corrupt.safetensors: "), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace rankone

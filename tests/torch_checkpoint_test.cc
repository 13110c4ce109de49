#include "formats/zip_archive.h"
#include "pickle_builder.h"
#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace rankone {
namespace {

namespace fs = std::filesystem;
using testing::PickleBuilder;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string write_temp(const std::string& name, const std::string& bytes) {
  std::string path = testing::temp_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::string little_endian(uint64_t value, int size) {
  std::string bytes;
  for (int i = 0; i < size; ++i) bytes.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return bytes;
}

std::string float_bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// Returns the message of the Error that load_tensor_file throws, or "" when it throws none.
std::string load_error(const std::string& path, ErrorKind expected_kind = ErrorKind::kInvalidInput) {
  try {
    load_tensor_file(path);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), expected_kind) << e.what();
    return e.what();
  }
  return "";
}

// A stored (uncompressed) zip archive as torch.save writes it, built in memory.
struct ZipItem {
  std::string name;
  std::string data;
  uint16_t method = 0;
};

// With `zip64`, every size, offset and count is written in the zip64 records and the classic
// fields hold all-ones, as writers do for archives over 4 GiB.
std::string make_zip(const std::vector<ZipItem>& items, bool zip64 = false) {
  std::string archive;
  std::string directory;
  for (const ZipItem& item : items) {
    uint32_t crc = formats::crc32(item.data);
    uint64_t size32 = zip64 ? 0xffffffff : item.data.size();
    std::string zip64_extra = little_endian(0x0001, 2) + little_endian(24, 2) + little_endian(item.data.size(), 8) +
                              little_endian(item.data.size(), 8) + little_endian(archive.size(), 8);
    std::string common_head = little_endian(0, 2) + little_endian(item.method, 2) + little_endian(0, 4) +
                              little_endian(crc, 4);
    std::string local_sizes = little_endian(item.data.size(), 4) + little_endian(item.data.size(), 4);
    directory += little_endian(0x02014b50, 4) + little_endian(45, 2) + little_endian(45, 2) + common_head +
                 little_endian(size32, 4) + little_endian(size32, 4) + little_endian(item.name.size(), 2) +
                 little_endian(zip64 ? zip64_extra.size() : 0, 2) + little_endian(0, 2) + little_endian(0, 2) +
                 little_endian(0, 2) + little_endian(0, 4) + little_endian(zip64 ? 0xffffffff : archive.size(), 4) +
                 item.name + (zip64 ? zip64_extra : "");
    archive += little_endian(0x04034b50, 4) + little_endian(45, 2) + common_head + local_sizes +
               little_endian(item.name.size(), 2) + little_endian(0, 2) + item.name + item.data;
  }

  std::string records;
  if (zip64) {
    uint64_t zip64_end_offset = archive.size() + directory.size();
    records += little_endian(0x06064b50, 4) + little_endian(44, 8) + little_endian(45, 2) + little_endian(45, 2) +
               little_endian(0, 4) + little_endian(0, 4) + little_endian(items.size(), 8) +
               little_endian(items.size(), 8) + little_endian(directory.size(), 8) + little_endian(archive.size(), 8);
    records += little_endian(0x07064b50, 4) + little_endian(0, 4) + little_endian(zip64_end_offset, 8) +
               little_endian(1, 4);
  }
  uint64_t count16 = zip64 ? 0xffff : items.size();
  records += little_endian(0x06054b50, 4) + little_endian(0, 2) + little_endian(0, 2) + little_endian(count16, 2) +
             little_endian(count16, 2) + little_endian(zip64 ? 0xffffffff : directory.size(), 4) +
             little_endian(zip64 ? 0xffffffff : archive.size(), 4) + little_endian(0, 2);
  return archive + directory + records;
}

// A legacy torch.save file: magic number, protocol version, system info, the object, the storage
// keys, then each storage as an 8-byte element count and its raw bytes.
struct LegacyStorage {
  std::string key;
  uint64_t count;
  std::string data;
};

std::string make_legacy(const std::string& object_pickle, const std::vector<LegacyStorage>& storages,
                        bool little_endian_machine = true, int64_t protocol = 1001) {
  std::string magic("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
  std::string bytes = PickleBuilder().proto().op(0x8a).op(10).raw(magic).stop().bytes();
  bytes += PickleBuilder().proto().integer(protocol).stop().bytes();
  bytes += PickleBuilder().proto().empty_dict().mark().text("protocol_version").integer(1001).text("little_endian")
               .boolean(little_endian_machine).setitems().stop().bytes();
  bytes += object_pickle;
  PickleBuilder keys;
  keys.proto().op(']').mark();
  for (const LegacyStorage& storage : storages) keys.text(storage.key);
  bytes += keys.op('e').stop().bytes();
  for (const LegacyStorage& storage : storages) bytes += little_endian(storage.count, 8) + storage.data;
  return bytes;
}

// {"model": {"w": tensor(storage "0", size [2, 3], stride [1, 2])}, "step": 3, "name": "g", "none": None}
std::string nested_object_pickle(const std::string& location = "cpu") {
  PickleBuilder builder;
  builder.proto().empty_dict().mark();
  builder.text("model").empty_dict().text("w");
  builder.global("torch._utils", "_rebuild_tensor_v2").mark();
  builder.storage("FloatStorage", "0", 6, location).integer(0).int_tuple({2, 3}).int_tuple({1, 2}).boolean(false);
  builder.global("collections", "OrderedDict").empty_tuple().reduce().tuple().reduce().setitem();
  builder.text("step").integer(3).text("name").text("g").text("none").none();
  return builder.setitems().stop().bytes();
}

void expect_nested_object(const TensorFile& file) {
  ASSERT_EQ(file.names, std::vector<std::string>{"model.w"});
  const at::Tensor& w = file.get("model.w");
  EXPECT_TRUE(w.is_contiguous());
  EXPECT_EQ(w.device(), at::kCPU);
  EXPECT_EQ(w.sizes(), at::IntArrayRef({2, 3}));
  // Stride [1, 2] reads the storage 0..5 column by column.
  at::Tensor expected = at::tensor({0.f, 2.f, 4.f, 1.f, 3.f, 5.f}).view({2, 3});
  EXPECT_TRUE(at::equal(w, expected)) << w;
  EXPECT_EQ(file.metadata.at("step"), "3");
  EXPECT_EQ(file.metadata.at("name"), "g");
  EXPECT_EQ(file.metadata.at("none"), "None");
}

std::string models_dir() {
  if (const char* env = std::getenv("RANKONE_LOCAL_MODELS")) return env;
  std::string fixtures = testing::fixtures_dir();
  return fixtures.empty() ? "" : fixtures + "/../models";
}

TEST(TorchCheckpoint, FixturesMatchSafetensors) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  TensorFile zip = load_tensor_file(folder + "/generator.pt");
  TensorFile legacy = load_tensor_file(folder + "/generator_legacy.pt");
  TensorFile reference = load_tensor_file(folder + "/generator.safetensors");
  EXPECT_EQ(zip.format, TensorFileFormat::kTorchZip);
  EXPECT_EQ(legacy.format, TensorFileFormat::kTorchLegacy);
  ASSERT_EQ(reference.names.size(), 92u);
  EXPECT_EQ(zip.names, reference.names);
  EXPECT_EQ(legacy.names, reference.names);
  EXPECT_TRUE(zip.metadata.empty());

  for (const std::string& name : reference.names) {
    SCOPED_TRACE(name);
    const at::Tensor& expected = reference.get(name);
    for (const TensorFile* file : {&zip, &legacy}) {
      const at::Tensor& actual = file->get(name);
      ASSERT_EQ(actual.scalar_type(), expected.scalar_type());
      ASSERT_EQ(actual.sizes(), expected.sizes());
      EXPECT_TRUE(actual.is_contiguous());
      EXPECT_EQ(std::memcmp(actual.data_ptr(), expected.data_ptr(), expected.nbytes()), 0);
    }
  }
  EXPECT_TRUE(zip.contains("g_ema.convs.3.conv.weight"));
  EXPECT_EQ(zip.get("latent_avg").sizes(), at::IntArrayRef({64}));
}

TEST(TorchCheckpoint, LoadsDcganOnCpu) {
  std::string models = models_dir();
  std::string path = models + "/dcgan-celeba32/generator.pt";
  if (models.empty() || !fs::exists(path)) GTEST_SKIP() << "DCGAN model not found (set RANKONE_LOCAL_MODELS)";

  TensorFile file = load_tensor_file(path);
  EXPECT_EQ(file.format, TensorFileFormat::kTorchLegacy);
  EXPECT_EQ(file.names.size(), 26u);
  EXPECT_EQ(file.names.front(), "generator_deconv.0.0.weight");

  struct Expected {
    const char* name;
    std::vector<int64_t> shape;
  };
  const Expected expected[] = {
      {"generator_deconv.0.0.weight", {100, 256, 4, 4}}, {"generator_deconv.0.1.running_var", {256}},
      {"generator_deconv.1.0.weight", {128, 256, 3, 3}}, {"generator_deconv.1.1.weight", {128}},
      {"generator_deconv.2.0.weight", {128, 64, 4, 4}},  {"generator_deconv.2.1.bias", {64}},
      {"generator_deconv.3.0.weight", {64, 32, 4, 4}},   {"generator_deconv.3.1.running_mean", {32}},
      {"generator_deconv.4.0.weight", {32, 3, 4, 4}},    {"generator_deconv.4.0.bias", {3}},
  };
  for (const Expected& e : expected) {
    SCOPED_TRACE(e.name);
    const at::Tensor& tensor = file.get(e.name);
    EXPECT_EQ(tensor.sizes(), at::IntArrayRef(e.shape));
    EXPECT_EQ(tensor.scalar_type(), at::kFloat);
    EXPECT_EQ(tensor.device(), at::kCPU);  // the file tags its storages cuda:0
  }
  const at::Tensor& batches = file.get("generator_deconv.1.1.num_batches_tracked");
  EXPECT_EQ(batches.scalar_type(), at::kLong);
  EXPECT_EQ(batches.dim(), 0);
  EXPECT_GT(file.get("generator_deconv.0.1.running_var").min().item<float>(), 0.f);
}

TEST(TorchCheckpoint, MissingFileNotFound) {
  std::string path = testing::temp_dir() + "/absent.pt";
  std::string message = load_error(path, ErrorKind::kNotFound);
  EXPECT_NE(message.find(path + ": file not found"), std::string::npos) << message;
}

TEST(TorchCheckpoint, FolderPathFails) {
  std::string folder = testing::temp_dir();
  EXPECT_NE(load_error(folder).find("is a folder"), std::string::npos);
}

TEST(TorchCheckpoint, TruncatedFixturesFail) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  for (const char* name : {"generator.pt", "generator_legacy.pt"}) {
    std::string bytes = read_bytes(folder + "/" + name);
    ASSERT_GT(bytes.size(), 20000u);
    for (size_t cut : {size_t{0}, size_t{5}, size_t{30}, size_t{100}, size_t{5000}, bytes.size() / 2,
                       bytes.size() - 100, bytes.size() - 1}) {
      SCOPED_TRACE(std::string(name) + " cut at " + std::to_string(cut));
      std::string path = write_temp(std::string("cut-") + name, bytes.substr(0, cut));
      std::string message = load_error(path);
      EXPECT_NE(message.find(path + ": "), std::string::npos) << message;
      EXPECT_NE(message.find("truncated"), std::string::npos) << message;
    }
  }
}

TEST(TorchCheckpoint, WrongMagicFails) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  std::string bytes = read_bytes(folder + "/generator_legacy.pt");
  bytes[6] = static_cast<char>(bytes[6] ^ 0x01);  // inside the 10 bytes of the magic number
  std::string message = load_error(write_temp("magic.pt", bytes));
  EXPECT_NE(message.find("not the torch.save magic number"), std::string::npos) << message;
}

TEST(TorchCheckpoint, UnknownFormatFails) {
  std::string message = load_error(write_temp("image.gif", std::string("GIF89a\x01\x00\x01\x00 some image data", 25)));
  EXPECT_NE(message.find("unknown file format: it starts with the bytes 47 49 46 38 39 61 01 00"), std::string::npos)
      << message;

  std::string pointer = load_error(write_temp("lfs.pt", "version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"));
  EXPECT_NE(pointer.find("Git LFS pointer"), std::string::npos) << pointer;

  std::string tiny = load_error(write_temp("tiny.pt", "PK\x03"));
  EXPECT_NE(tiny.find("only 3 bytes"), std::string::npos) << tiny;
}

TEST(TorchCheckpoint, ReadsZipCheckpoint) {
  std::string zip = make_zip({{"archive/data.pkl", nested_object_pickle()},
                              {"archive/data/0", float_bytes({0, 1, 2, 3, 4, 5})},
                              {"archive/version", "3\n"}});
  TensorFile file = load_tensor_file(write_temp("small.pt", zip));
  EXPECT_EQ(file.format, TensorFileFormat::kTorchZip);
  expect_nested_object(file);
}

TEST(TorchCheckpoint, ReadsZip64Checkpoint) {
  std::string zip = make_zip({{"archive/data.pkl", nested_object_pickle()},
                              {"archive/data/0", float_bytes({0, 1, 2, 3, 4, 5})}},
                             true);
  TensorFile file = load_tensor_file(write_temp("small64.pt", zip));
  expect_nested_object(file);
}

TEST(TorchCheckpoint, ReadsLegacyCheckpoint) {
  std::string legacy = make_legacy(nested_object_pickle("cuda:0"), {{"0", 6, float_bytes({0, 1, 2, 3, 4, 5})}});
  TensorFile file = load_tensor_file(write_temp("small_legacy.pt", legacy));
  EXPECT_EQ(file.format, TensorFileFormat::kTorchLegacy);
  expect_nested_object(file);
}

TEST(TorchCheckpoint, ReadsLegacyStorageView) {
  // Persistent id with view metadata: the tensor's storage is elements [2, 5) of storage "root".
  PickleBuilder builder;
  builder.proto().empty_dict().text("v").global("torch._utils", "_rebuild_tensor").mark();
  builder.mark().text("storage").global("torch", "FloatStorage").text("root").text("cpu").integer(6);
  builder.mark().text("view").integer(2).integer(3).tuple().tuple().binpersid();
  builder.integer(1).int_tuple({2}).int_tuple({1}).tuple().reduce().setitem().stop();
  std::string legacy = make_legacy(builder.bytes(), {{"root", 6, float_bytes({0, 1, 2, 3, 4, 5})}});

  TensorFile file = load_tensor_file(write_temp("view.pt", legacy));
  EXPECT_TRUE(at::equal(file.get("v"), at::tensor({3.f, 4.f})));
}

TEST(TorchCheckpoint, SharedStorageGivesIndependentTensors) {
  // Two tensors over one storage, as tied or sliced weights are saved.
  PickleBuilder builder;
  builder.proto().empty_dict().mark();
  builder.text("a").tensor("FloatStorage", "0", 4, 0, {2}, {1});
  builder.text("b").tensor("FloatStorage", "0", 4, 1, {3}, {1});
  builder.setitems().stop();
  std::string zip = make_zip({{"m/data.pkl", builder.bytes()}, {"m/data/0", float_bytes({1, 2, 3, 4})}});

  TensorFile file = load_tensor_file(write_temp("shared.pt", zip));
  at::Tensor a = file.get("a");
  at::Tensor b = file.get("b");
  EXPECT_TRUE(at::equal(a, at::tensor({1.f, 2.f})));
  EXPECT_TRUE(at::equal(b, at::tensor({2.f, 3.f, 4.f})));
  a.fill_(0);
  EXPECT_EQ(b[0].item<float>(), 2.f);
}

TEST(TorchCheckpoint, RejectsBadZipCheckpoints) {
  std::string tensor_pickle =
      PickleBuilder().proto().empty_dict().text("w").tensor("FloatStorage", "0", 4, 0, {4}, {1}).setitem().stop().bytes();
  std::string four_floats = float_bytes({1, 2, 3, 4});

  std::string corrupt = make_zip({{"m/data.pkl", tensor_pickle}, {"m/data/0", four_floats}});
  corrupt[corrupt.find("m/data/0") + 8 + 5] ^= 0x40;  // a byte of the first float, after the local header name

  std::string broken_directory = make_zip({{"m/data.pkl", tensor_pickle}});
  broken_directory[broken_directory.find("PK\x01\x02") + 2] = 'X';

  std::string duplicate_names =
      PickleBuilder().proto().empty_dict().mark().text("a.b").integer(1).text("a").empty_dict().text("b").integer(2)
          .setitem().setitems().stop().bytes();

  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {"no data.pkl", make_zip({{"m/version", "3\n"}}), "the zip archive has no <folder>/data.pkl entry"},
      {"os.system",
       make_zip({{"m/data.pkl", PickleBuilder().proto().global("os", "system").text("echo").tuple1().reduce().stop().bytes()}}),
       "(m/data.pkl): pickle global 'os.system' at byte 2 is not allowed"},
      {"load_from_bytes",
       make_zip({{"m/data.pkl",
                  PickleBuilder().proto().global("torch.storage", "_load_from_bytes").text("x").tuple1().reduce().stop().bytes()}}),
       "runs torch.load on bytes inside the file"},
      {"missing storage", make_zip({{"m/data.pkl", tensor_pickle}}), "has no entry 'm/data/0' for a tensor storage"},
      {"short storage", make_zip({{"m/data.pkl", tensor_pickle}, {"m/data/0", four_floats.substr(0, 8)}}),
       "zip entry 'm/data/0' has 8 bytes, but its storage of 4 Float elements needs 16"},
      {"tensor past storage",
       make_zip({{"m/data.pkl",
                  PickleBuilder().proto().empty_dict().text("w").tensor("FloatStorage", "0", 4, 2, {2, 2}, {2, 1})
                      .setitem().stop().bytes()},
                 {"m/data/0", four_floats}}),
       "tensor 'w' with size [2, 2], stride [2, 1] and offset 2 reaches past the end of its storage of 4 elements"},
      {"crc mismatch", corrupt, "zip entry 'm/data/0' fails its CRC-32 check"},
      {"compressed", make_zip({{"m/data.pkl", tensor_pickle, 8}}), "zip entry 'm/data.pkl' is compressed (method 8)"},
      {"torchscript", make_zip({{"m/data.pkl", tensor_pickle}, {"m/constants.pkl", "x"}}), "TorchScript archive"},
      {"big endian", make_zip({{"m/data.pkl", tensor_pickle}, {"m/byteorder", "big"}}), "in 'big' byte order"},
      {"duplicate names", make_zip({{"m/data.pkl", duplicate_names}}), "flatten to the same name 'a.b'"},
      {"bare tensor",
       make_zip({{"m/data.pkl", PickleBuilder().proto().tensor("FloatStorage", "0", 4, 0, {4}, {1}).stop().bytes()},
                 {"m/data/0", four_floats}}),
       "contains a single <tensor>, not a dict of tensors"},
      {"bool storage",
       make_zip({{"m/data.pkl",
                  PickleBuilder().proto().empty_dict().text("b").tensor("BoolStorage", "0", 2, 0, {2}, {1}).setitem()
                      .stop().bytes()},
                 {"m/data/0", "\x01\x07"}}),
       "bool storage '0' contains the byte 7"},
      {"broken central directory", broken_directory,
       "invalid zip archive"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string path = write_temp("bad.pt", c.bytes);
    std::string message = load_error(path);
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(TorchCheckpoint, RejectsBadLegacyCheckpoints) {
  std::string object = nested_object_pickle();
  std::string six_floats = float_bytes({0, 1, 2, 3, 4, 5});
  std::string hostile =
      PickleBuilder().proto().global("posix", "system").text("echo").tuple1().reduce().stop().bytes();
  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {"posix.system", make_legacy(hostile, {}), "pickle global 'posix.system' at byte 76 is not allowed"},
      {"protocol", make_legacy(object, {{"0", 6, six_floats}}, true, 1000), "unsupported legacy checkpoint protocol version 1000"},
      {"big endian", make_legacy(object, {{"0", 6, six_floats}}, false), "written on a big-endian machine"},
      {"count mismatch", make_legacy(object, {{"0", 5, six_floats}}), "storage '0' holds 5 elements but the pickle names 6"},
      {"unknown key", make_legacy(object, {{"0", 6, six_floats}, {"9", 1, "abcd"}}), "storage '9' is stored but no tensor names it"},
      {"missing storage", make_legacy(object, {}), "storage '0' is missing from the list of stored storages"},
      {"short data", make_legacy(object, {{"0", 6, six_floats.substr(0, 20)}}),
       "truncated checkpoint: storage '0' needs 24 bytes"},
      {"plain pickle", PickleBuilder().proto().empty_dict().stop().bytes() + std::string(16, '\0'),
       "not a PyTorch checkpoint: the first pickled value is <dict of 0 items>"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string path = write_temp("bad_legacy.pt", c.bytes);
    std::string message = load_error(path);
    EXPECT_NE(message.find(path + ": "), std::string::npos) << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(TorchCheckpoint, SurvivesCorruptedLegacy) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  std::string original = read_bytes(folder + "/generator_legacy.pt");
  ASSERT_GT(original.size(), 11000u);
  std::string path = testing::temp_dir() + "/corrupt.pt";
  std::mt19937 random(99);
  int rejected = 0;
  for (int trial = 0; trial < 100; ++trial) {
    std::string bytes = original;
    // Corrupt the pickles and the storage key list (the first ~11 KB), not only tensor data.
    for (int flips = 0; flips < 2; ++flips) bytes[random() % 11000] = static_cast<char>(random() & 0xff);
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    // Each file either loads or raises rankone::Error naming it, never anything else.
    try {
      load_tensor_file(path);
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST(TorchCheckpoint, SurvivesCorruptedZipDirectory) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  std::string original = read_bytes(folder + "/generator.pt");
  ASSERT_GT(original.size(), 8000u);
  std::string path = testing::temp_dir() + "/corrupt.pt";
  std::mt19937 random(7);
  int rejected = 0;
  for (int trial = 0; trial < 100; ++trial) {
    std::string bytes = original;
    // Corrupt the central directory and end records in the last 8 KB.
    for (int flips = 0; flips < 2; ++flips) {
      bytes[bytes.size() - 1 - random() % 8000] = static_cast<char>(random() & 0xff);
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    try {
      load_tensor_file(path);
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST(TorchCheckpoint, FormatNames) {
  EXPECT_EQ(format_name(TensorFileFormat::kTorchZip), "pytorch-zip");
  EXPECT_EQ(format_name(TensorFileFormat::kTorchLegacy), "pytorch-legacy");
  EXPECT_EQ(format_name(TensorFileFormat::kSafetensors), "safetensors");
}

}  // namespace
}  // namespace rankone

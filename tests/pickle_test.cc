#include "formats/pickle.h"

#include "pickle_builder.h"
#include "rankone/error.h"
#include "test_support.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <string>

namespace rankone::formats {
namespace {

using Kind = PickleValue::Kind;
using testing::PickleBuilder;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Returns the message of the Error that read_pickle throws, or "" when it throws none.
std::string pickle_error(const std::string& bytes) {
  try {
    read_pickle(bytes, "test.pkl");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
    return e.what();
  }
  return "";
}

// Returns the value stored under the string key `key` of a dict, or nullptr.
const PickleValue* lookup(const PickleValue& dict, const std::string& key) {
  for (const auto& [k, v] : dict.entries) {
    if (k->kind == Kind::kString && k->text == key) return v;
  }
  return nullptr;
}

TEST(Pickle, ReadsEveryProtocol) {
  for (int protocol = 0; protocol <= 5; ++protocol) {
    SCOPED_TRACE("protocol " + std::to_string(protocol));
    std::string bytes = read_bytes(testing::test_data_dir() + "/pickle/plain_protocol" + std::to_string(protocol) + ".pkl");
    ASSERT_FALSE(bytes.empty());
    PickleDocument document = read_pickle(bytes, "plain.pkl");
    const PickleValue& root = document.root();
    EXPECT_EQ(document.end_offset(), bytes.size());
    ASSERT_EQ(root.kind, Kind::kDict);
    ASSERT_EQ(root.entries.size(), 9u);

    EXPECT_EQ(lookup(root, "a")->integer, 1);
    const PickleValue* list = lookup(root, "b");
    ASSERT_EQ(list->kind, Kind::kList);
    ASSERT_EQ(list->items.size(), 4u);
    EXPECT_EQ(list->items[0]->real, 1.5);
    EXPECT_EQ(list->items[1]->kind, Kind::kNone);
    EXPECT_EQ(list->items[2]->kind, Kind::kBool);
    EXPECT_TRUE(list->items[2]->boolean);
    EXPECT_FALSE(list->items[3]->boolean);

    const PickleValue* strings = lookup(root, "c");
    ASSERT_EQ(strings->kind, Kind::kTuple);
    ASSERT_EQ(strings->items.size(), 2u);
    EXPECT_EQ(strings->items[0]->text, "h\xc3\xa9\xe2\x82\xac");
    EXPECT_EQ(strings->items[1]->text, "line\\u0041");

    EXPECT_EQ(lookup(root, "big")->kind, Kind::kBigInt);
    EXPECT_EQ(lookup(root, "big")->to_text(), "0x400000000000000000");
    EXPECT_EQ(lookup(root, "neg")->integer, -5);
    EXPECT_EQ(lookup(root, "i32")->integer, -70000);
    EXPECT_EQ(lookup(root, "i64")->integer, int64_t{1} << 40);
    EXPECT_EQ(root.entries[7].first->integer, -1);
    EXPECT_EQ(root.entries[7].second->text, "x");

    const PickleValue* ordered = lookup(root, "od");
    ASSERT_EQ(ordered->kind, Kind::kOrderedDict);
    ASSERT_EQ(ordered->entries.size(), 2u);
    EXPECT_EQ(ordered->entries[0].first->text, "k");
    EXPECT_EQ(ordered->entries[1].second->integer, 3);
  }
}

TEST(Pickle, PrintsScalarsLikePython) {
  PickleDocument document = read_pickle(
      PickleBuilder().proto().mark().none().boolean(true).integer(-3).op('G').raw(std::string("\x3f\xf0\0\0\0\0\0\0", 8))
          .op('G').raw(std::string("\x3f\xe0\0\0\0\0\0\0", 8)).op('C').op(2).raw("xy").tuple().stop().bytes(),
      "mem");
  const std::vector<PickleValue*>& items = document.root().items;
  ASSERT_EQ(items.size(), 6u);
  EXPECT_EQ(items[0]->to_text(), "None");
  EXPECT_EQ(items[1]->to_text(), "True");
  EXPECT_EQ(items[2]->to_text(), "-3");
  EXPECT_EQ(items[3]->to_text(), "1.0");
  EXPECT_EQ(items[4]->to_text(), "0.5");
  EXPECT_EQ(items[5]->kind, Kind::kBytes);
  EXPECT_EQ(items[5]->to_text(), "<bytes of length 2>");
}

TEST(Pickle, ReadsLegacyMagicNumber) {
  std::string magic("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
  PickleDocument document = read_pickle(PickleBuilder().proto().op(0x8a).op(10).raw(magic).stop().bytes(), "mem");
  EXPECT_EQ(document.root().kind, Kind::kBigInt);
  EXPECT_EQ(document.root().text, magic);
  EXPECT_EQ(document.root().to_text(), "0x1950a86a20f9469cfc6c");
}

TEST(Pickle, ReadsNegativeLong) {
  // LONG1 of 9 bytes whose value fits in int64 after sign extension, and one that does not.
  std::string minus_two = PickleBuilder().proto().op(0x8a).op(9).raw(std::string(9, '\xff')).bytes();
  minus_two[4] = '\xfe';
  PickleDocument small = read_pickle(minus_two + ".", "mem");
  EXPECT_EQ(small.root().kind, Kind::kInt);
  EXPECT_EQ(small.root().integer, -2);

  std::string large("\0\0\0\0\0\0\0\0\xff", 9);  // -2^64
  PickleDocument big = read_pickle(PickleBuilder().proto().op(0x8a).op(9).raw(large).stop().bytes(), "mem");
  EXPECT_EQ(big.root().kind, Kind::kBigInt);
  EXPECT_EQ(big.root().to_text(), "-0x10000000000000000");
}

TEST(Pickle, ReplacesDuplicateKeys) {
  PickleDocument document = read_pickle(
      PickleBuilder().proto().empty_dict().mark().text("k").integer(1).text("k").integer(2).setitems().stop().bytes(),
      "mem");
  ASSERT_EQ(document.root().entries.size(), 1u);
  EXPECT_EQ(document.root().entries[0].second->integer, 2);
}

TEST(Pickle, BuildsTensorReference) {
  PickleDocument document = read_pickle(
      PickleBuilder().proto().tensor("HalfStorage", "7", 24, 2, {2, 3}, {3, 1}).stop().bytes(), "mem");
  const PickleValue& root = document.root();
  ASSERT_EQ(root.kind, Kind::kTensor);
  const PickleTensor& tensor = *root.tensor;
  EXPECT_EQ(tensor.storage_offset, 2);
  EXPECT_EQ(tensor.sizes, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(tensor.strides, (std::vector<int64_t>{3, 1}));
  ASSERT_EQ(tensor.storage->kind, Kind::kStorage);
  EXPECT_EQ(tensor.storage->storage->dtype, c10::ScalarType::Half);
  EXPECT_EQ(tensor.storage->storage->key, "7");
  EXPECT_EQ(tensor.storage->storage->numel, 24);
  ASSERT_EQ(document.storages().size(), 1u);
}

TEST(Pickle, BuildsParameter) {
  PickleBuilder builder;
  builder.proto().global("torch._utils", "_rebuild_parameter").mark();
  builder.tensor("FloatStorage", "0", 4, 0, {4}, {1}).boolean(true);
  builder.global("collections", "OrderedDict").empty_tuple().reduce().tuple().reduce().stop();
  PickleDocument document = read_pickle(builder.bytes(), "mem");
  ASSERT_EQ(document.root().kind, Kind::kTensor);
  EXPECT_TRUE(document.root().tensor->requires_grad);
}

TEST(Pickle, AcceptsStateDictMetadata) {
  // torch.save(model.state_dict()) sets the OrderedDict's _metadata attribute with BUILD.
  PickleBuilder builder;
  builder.proto().global("collections", "OrderedDict").empty_tuple().reduce();
  builder.text("w").integer(1).setitem();
  builder.empty_dict().text("_metadata").global("collections", "OrderedDict").empty_tuple().reduce().setitem();
  builder.build().stop();
  PickleDocument document = read_pickle(builder.bytes(), "mem");
  ASSERT_EQ(document.root().kind, Kind::kOrderedDict);
  EXPECT_EQ(document.root().entries.size(), 1u);
}

TEST(Pickle, RejectsDisallowedGlobals) {
  struct Case {
    std::string module;
    std::string name;
    const char* message;
  };
  const Case cases[] = {
      {"os", "system", "pickle global 'os.system' at byte 2 is not allowed"},
      {"builtins", "eval", "pickle global 'builtins.eval'"},
      {"subprocess", "Popen", "pickle global 'subprocess.Popen'"},
      {"posix", "system", "pickle global 'posix.system'"},
      {"__builtin__", "getattr", "pickle global '__builtin__.getattr'"},
      {"torch", "load", "pickle global 'torch.load'"},
      {"argparse", "Namespace", "pickle global 'argparse.Namespace'"},
      {"torch.storage", "_load_from_bytes", "runs torch.load on bytes inside the file"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.module + "." + c.name);
    // GLOBAL, then REDUCE as a malicious pickle would do.
    std::string message =
        pickle_error(PickleBuilder().proto().global(c.module, c.name).text("echo").tuple1().reduce().stop().bytes());
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
    EXPECT_NE(message.find("test.pkl: "), std::string::npos) << message;

    // STACK_GLOBAL takes the names from the stack (protocol 4).
    std::string stacked =
        pickle_error(PickleBuilder().proto(4).text(c.module).text(c.name).op(0x93).empty_tuple().reduce().stop().bytes());
    EXPECT_NE(stacked.find(c.module + "." + c.name), std::string::npos) << stacked;
  }
}

TEST(Pickle, RejectsCodeOpcodes) {
  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {"INST", "(ios\nsystem\n.", "pickle opcode INST at byte 1 is not allowed"},
      {"OBJ", PickleBuilder().proto().mark().global("collections", "OrderedDict").op('o').stop().bytes(),
       "pickle opcode OBJ"},
      {"EXT1", PickleBuilder().proto().op(0x82).op(1).stop().bytes(), "pickle opcode EXT1"},
      {"EXT2", PickleBuilder().proto().op(0x83).little_endian(1, 2).stop().bytes(), "pickle opcode EXT2"},
      {"EXT4", PickleBuilder().proto().op(0x84).little_endian(1, 4).stop().bytes(), "pickle opcode EXT4"},
      {"PERSID", "Pstorage0\n.", "pickle opcode PERSID"},
      {"STRING", "S'abc'\n.", "opcode STRING is not supported"},
      {"NEXT_BUFFER", PickleBuilder().proto(5).op(0x97).stop().bytes(), "opcode NEXT_BUFFER is not supported"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string message = pickle_error(c.bytes);
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(Pickle, RejectsCallsOutsideAllowList) {
  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {"storage class called", PickleBuilder().proto().global("torch", "FloatStorage").empty_tuple().reduce().stop().bytes(),
       "pickle calls 'torch.FloatStorage'"},
      {"NEWOBJ of storage", PickleBuilder().proto().global("torch", "FloatStorage").empty_tuple().op(0x81).stop().bytes(),
       "NEWOBJ at byte 23 creates an instance of 'torch.FloatStorage'"},
      {"BUILD on list", PickleBuilder().proto().op(']').empty_dict().build().stop().bytes(),
       "BUILD at byte 4 sets the state of a list"},
      {"BUILD tensor state",
       PickleBuilder().proto().tensor("FloatStorage", "0", 1, 0, {1}, {1}).text("x").build().stop().bytes(),
       "sets the state of a tensor from a str"},
      {"REDUCE on string", PickleBuilder().proto().text("os.system").empty_tuple().reduce().stop().bytes(),
       "REDUCE calls a str"},
      {"persistent id not storage", PickleBuilder().proto().text("x").tuple1().binpersid().stop().bytes(),
       "is not a ('storage', type, key, location, size) tuple"},
      {"persistent id bad type",
       PickleBuilder().proto().mark().text("storage").global("collections", "OrderedDict").text("0").text("cpu")
           .integer(1).tuple().binpersid().stop().bytes(),
       "names the storage type collections.OrderedDict"},
      {"rebuild without storage",
       PickleBuilder().proto().global("torch._utils", "_rebuild_tensor").mark().none().integer(0).int_tuple({1})
           .int_tuple({1}).tuple().reduce().stop().bytes(),
       "argument 1 is a None, not a storage"},
      {"negative stride",
       PickleBuilder().proto().global("torch._utils", "_rebuild_tensor").mark().storage("FloatStorage", "0", 4)
           .integer(0).int_tuple({2}).mark().integer(-1).tuple().tuple().reduce().stop().bytes(),
       "tensor stride entry is -1, not a non-negative integer"},
      {"size stride mismatch",
       PickleBuilder().proto().global("torch._utils", "_rebuild_tensor").mark().storage("FloatStorage", "0", 4)
           .integer(0).int_tuple({2, 2}).int_tuple({1}).tuple().reduce().stop().bytes(),
       "tensor size has 2 dimensions but its stride has 1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string message = pickle_error(c.bytes);
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(Pickle, RejectsMalformedStreams) {
  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  std::string deep_marks = PickleBuilder().proto().bytes() + std::string(5000, '(');
  const Case cases[] = {
      {"empty", "", "the stream ends at byte 0 before its STOP opcode"},
      {"no stop", PickleBuilder().proto().none().bytes(), "truncated pickle: the stream ends at byte 3"},
      {"huge string", PickleBuilder().proto().op('X').little_endian(0xffffffff, 4).raw("abc").bytes(),
       "opcode BINUNICODE at byte 2 needs 4294967295 bytes but only 3 remain"},
      {"huge bytes8", PickleBuilder().proto(4).op(0x8e).little_endian(~uint64_t{0}, 8).bytes(),
       "opcode BINBYTES8 at byte 2 needs 18446744073709551615 bytes"},
      {"huge frame", PickleBuilder().proto(4).op(0x95).little_endian(1000, 8).none().stop().bytes(),
       "FRAME at byte 2 is longer than the rest"},
      {"huge long4", PickleBuilder().proto().op(0x8b).little_endian(100000, 4).bytes(), "LONG4 integer of 100000 bytes"},
      {"bad protocol", PickleBuilder().proto(9).none().stop().bytes(), "unsupported pickle protocol 9"},
      {"unknown opcode", PickleBuilder().proto().op(0xff).bytes(), "unknown opcode 0xff"},
      {"empty stack", PickleBuilder().proto().stop().bytes(), "opcode STOP found an empty stack"},
      {"pop below mark", PickleBuilder().proto().none().mark().op('0').bytes(), "opcode POP found an empty stack"},
      {"no mark", PickleBuilder().proto().tuple().bytes(), "opcode TUPLE has no matching MARK"},
      {"deep marks", deep_marks, "MARKs nest deeper than 4096 levels"},
      {"missing memo", PickleBuilder().proto().get(5).stop().bytes(), "BINGET of memo entry 5, which was never stored"},
      {"setitem on list", PickleBuilder().proto().op(']').text("k").integer(1).setitem().stop().bytes(),
       "SETITEM on a list, not a dict"},
      {"odd setitems", PickleBuilder().proto().empty_dict().mark().text("k").setitems().stop().bytes(),
       "SETITEMS has a key without a value"},
      {"append to dict", PickleBuilder().proto().empty_dict().none().op('a').stop().bytes(), "APPEND on a dict"},
      {"invalid utf8", PickleBuilder().proto().op(0x8c).op(2).raw("\xc3\x28").stop().bytes(), "not valid UTF-8"},
      {"stop inside mark", PickleBuilder().proto().none().mark().stop().bytes(), "STOP inside an unclosed MARK"},
      {"bad int text", "Iabc\n.", "INT has an invalid integer 'abc'"},
      {"bad float text", "F1.5x\n.", "FLOAT has an invalid number '1.5x'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string message = pickle_error(c.bytes);
    EXPECT_NE(message.find("test.pkl: "), std::string::npos) << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(Pickle, StopsAtFirstStop) {
  std::string first = PickleBuilder().proto().integer(1001).stop().bytes();
  std::string second = PickleBuilder().proto().text("next").stop().bytes();
  PickleDocument document = read_pickle(first + second, "mem", 100);
  EXPECT_EQ(document.end_offset(), first.size());
  EXPECT_EQ(document.root().integer, 1001);

  // Offsets in messages count from base_offset.
  try {
    read_pickle(PickleBuilder().proto().global("os", "system").bytes(), "mem", 100);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at byte 102"), std::string::npos) << e.what();
  }
}

TEST(Pickle, SurvivesEveryTruncation) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  // The first pickle after the legacy header is the whole object: about 10 KB of opcodes.
  std::string bytes = read_bytes(folder + "/generator_legacy.pt").substr(137, 10174);
  ASSERT_NO_THROW(read_pickle(bytes, "object.pkl"));
  for (size_t cut = 0; cut < bytes.size(); cut += 7) {
    SCOPED_TRACE(cut);
    std::string message = pickle_error(bytes.substr(0, cut));
    EXPECT_NE(message.find("truncated pickle"), std::string::npos) << message;
  }
}

TEST(Pickle, SurvivesCorruptedBytes) {
  RANKONE_REQUIRE_FIXTURE(folder, "stylegan2-tiny");
  std::string original = read_bytes(folder + "/generator_legacy.pt").substr(137, 10174);
  std::mt19937 random(1234);
  int rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes = original;
    for (int flips = 0; flips < 3; ++flips) {
      bytes[random() % bytes.size()] = static_cast<char>(random() & 0xff);
    }
    // Each corrupted stream either parses or raises rankone::Error, never anything else.
    try {
      read_pickle(bytes, "corrupt.pkl");
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find("corrupt.pkl"), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace rankone::formats

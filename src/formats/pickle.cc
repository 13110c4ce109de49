// The restricted pickle machine. Opcode meanings follow the pickle protocol as CPython's
// Lib/pickletools.py documents them (protocols 0 to 5). Unlike Python's Unpickler, this machine
// calls nothing: the few allow-listed callables are interpreted here by name.
#include "formats/pickle.h"

#include "formats/file_io.h"
#include "rankone/error.h"

#include <charconv>
#include <cstring>
#include <map>
#include <unordered_map>

namespace rankone::formats {

namespace {

using Kind = PickleValue::Kind;

// Bounds on the machine's own state. torch.save streams stay far below them: a state dict
// needs a stack of a few thousand entries and a mark depth of about ten.
constexpr size_t kMaxStackSize = size_t{1} << 20;
constexpr size_t kMaxMarkDepth = 4096;
// Integers wider than this come from no torch.save stream; the legacy magic number has 10 bytes.
constexpr size_t kMaxIntegerBytes = 1024;

// Rebuild functions and classes that the machine interprets without running Python code.
constexpr char kOrderedDict[] = "collections.OrderedDict";
constexpr char kRebuildTensorV2[] = "torch._utils._rebuild_tensor_v2";
constexpr char kRebuildTensor[] = "torch._utils._rebuild_tensor";
constexpr char kRebuildParameter[] = "torch._utils._rebuild_parameter";
constexpr char kLoadFromBytes[] = "torch.storage._load_from_bytes";

const std::map<std::string, c10::ScalarType>& storage_classes() {
  static const std::map<std::string, c10::ScalarType> classes = {
      {"torch.DoubleStorage", c10::ScalarType::Double}, {"torch.FloatStorage", c10::ScalarType::Float},
      {"torch.HalfStorage", c10::ScalarType::Half},     {"torch.BFloat16Storage", c10::ScalarType::BFloat16},
      {"torch.LongStorage", c10::ScalarType::Long},     {"torch.IntStorage", c10::ScalarType::Int},
      {"torch.ShortStorage", c10::ScalarType::Short},   {"torch.CharStorage", c10::ScalarType::Char},
      {"torch.ByteStorage", c10::ScalarType::Byte},     {"torch.BoolStorage", c10::ScalarType::Bool},
  };
  return classes;
}

bool is_allowed_global(const std::string& name) {
  return name == kOrderedDict || name == kRebuildTensorV2 || name == kRebuildTensor || name == kRebuildParameter ||
         storage_classes().count(name) != 0;
}

bool is_valid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    auto byte = static_cast<unsigned char>(text[i]);
    int continuation = 0;
    uint32_t code_point = 0;
    if (byte < 0x80) {
      ++i;
      continue;
    } else if ((byte & 0xe0) == 0xc0) {
      continuation = 1;
      code_point = byte & 0x1f;
    } else if ((byte & 0xf0) == 0xe0) {
      continuation = 2;
      code_point = byte & 0x0f;
    } else if ((byte & 0xf8) == 0xf0) {
      continuation = 3;
      code_point = byte & 0x07;
    } else {
      return false;
    }
    if (i + continuation >= text.size()) return false;
    for (int k = 1; k <= continuation; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      code_point = (code_point << 6) | (next & 0x3f);
    }
    // Overlong forms, UTF-16 surrogates and values past U+10FFFF are invalid UTF-8.
    static constexpr uint32_t kMinForLength[] = {0, 0x80, 0x800, 0x10000};
    if (code_point < kMinForLength[continuation] || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff)) {
      return false;
    }
    i += continuation + 1;
  }
  return true;
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt:
    case Kind::kBigInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kSet: return "set";
    case Kind::kDict: return "dict";
    case Kind::kOrderedDict: return "OrderedDict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
  }
  return "value";
}

// Converts a decimal integer (digits already checked by from_chars) to little-endian two's complement bytes.
std::string decimal_to_twos_complement(std::string_view digits) {
  bool negative = !digits.empty() && digits[0] == '-';
  if (negative) digits.remove_prefix(1);

  // Magnitude: bytes = bytes * 10 + digit, little-endian.
  std::string bytes;
  for (char digit : digits) {
    unsigned carry = static_cast<unsigned>(digit - '0');
    for (char& byte : bytes) {
      unsigned value = static_cast<unsigned char>(byte) * 10u + carry;
      byte = static_cast<char>(value & 0xff);
      carry = value >> 8;
    }
    if (carry != 0) bytes.push_back(static_cast<char>(carry));
  }
  bytes.push_back('\0');  // room for the sign bit

  if (negative) {
    unsigned carry = 1;
    for (char& byte : bytes) {
      unsigned value = static_cast<unsigned char>(~static_cast<unsigned char>(byte)) + carry;
      byte = static_cast<char>(value & 0xff);
      carry = value >> 8;
    }
  }
  return bytes;
}

std::string hex_byte(uint8_t byte) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return std::string{'0', 'x', kDigits[byte >> 4], kDigits[byte & 15]};
}

}  // namespace

std::string PickleValue::to_text() const {
  switch (kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return boolean ? "True" : "False";
    case Kind::kInt:
      return std::to_string(integer);
    case Kind::kBigInt: {
      // `text` is little-endian two's complement. Print the magnitude in hexadecimal.
      std::string magnitude(text);
      bool negative = !magnitude.empty() && (static_cast<unsigned char>(magnitude.back()) & 0x80);
      if (negative) {
        unsigned carry = 1;
        for (char& byte : magnitude) {
          unsigned value = static_cast<unsigned char>(~static_cast<unsigned char>(byte)) + carry;
          byte = static_cast<char>(value & 0xff);
          carry = value >> 8;
        }
      }
      std::string digits;
      for (auto it = magnitude.rbegin(); it != magnitude.rend(); ++it) {
        digits += hex_byte(static_cast<uint8_t>(*it)).substr(2);
      }
      size_t first = digits.find_first_not_of('0');
      digits = first == std::string::npos ? "0" : digits.substr(first);
      return (negative ? "-0x" : "0x") + digits;
    }
    case Kind::kFloat: {
      char buffer[64];
      auto result = std::to_chars(buffer, buffer + sizeof(buffer), real);
      std::string printed(buffer, result.ptr);
      // Python prints integral floats with ".0" (1.0, not 1).
      if (printed.find_first_of(".en") == std::string::npos) printed += ".0";
      return printed;
    }
    case Kind::kString:
    case Kind::kGlobal:
      return text;
    case Kind::kBytes:
      return "<bytes of length " + std::to_string(text.size()) + ">";
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kSet:
      return "<" + std::string(kind_name(kind)) + " of " + std::to_string(items.size()) + " items>";
    case Kind::kDict:
    case Kind::kOrderedDict:
      return "<" + std::string(kind_name(kind)) + " of " + std::to_string(entries.size()) + " items>";
    case Kind::kStorage:
      return "<storage " + storage->key + ">";
    case Kind::kTensor:
      return "<tensor>";
  }
  return "";
}

std::vector<const PickleStorage*> PickleDocument::storages() const {
  std::vector<const PickleStorage*> result;
  for (const auto& value : values_) {
    if (value->kind == Kind::kStorage) result.push_back(value->storage.get());
  }
  return result;
}

class PickleMachine {
 public:
  PickleMachine(std::string_view bytes, const std::string& source, size_t base_offset)
      : bytes_(bytes), source_(source), base_offset_(base_offset) {}

  PickleDocument run() {
    while (true) {
      if (position_ >= bytes_.size()) {
        throw invalid_input(source_ + ": truncated pickle: the stream ends at byte " +
                            std::to_string(base_offset_ + position_) +
                            " before its STOP opcode (the file is truncated; download or copy it again)");
      }
      opcode_offset_ = position_;
      opcode_ = static_cast<uint8_t>(bytes_[position_++]);
      if (execute()) break;
    }
    document_.end_offset_ = position_;
    return std::move(document_);
  }

 private:
  // Messages

  std::string where() const { return " at byte " + std::to_string(base_offset_ + opcode_offset_); }

  Error malformed(const std::string& problem) const {
    return invalid_input(source_ + ": invalid pickle" + where() + ": " + problem +
                         " (the file is damaged or was not written by torch.save)");
  }

  Error rejected(const std::string& problem) const {
    return invalid_input(source_ + ": " + problem +
                         " (rankone reads only tensors and plain containers; this file may try to run code)");
  }

  // Input

  std::string_view read_bytes(uint64_t count, const char* opcode_name) {
    uint64_t remaining = bytes_.size() - position_;
    if (count > remaining) {
      throw invalid_input(source_ + ": truncated pickle: opcode " + opcode_name + where() + " needs " +
                          std::to_string(count) + " bytes but only " + std::to_string(remaining) +
                          " remain (the file is truncated or damaged; download or copy it again)");
    }
    std::string_view view = bytes_.substr(position_, count);
    position_ += count;
    return view;
  }

  uint64_t read_unsigned(int size, const char* opcode_name) {
    return read_little_endian(read_bytes(size, opcode_name).data(), size);
  }

  // Reads a newline-terminated argument of the text opcodes (protocol 0).
  std::string_view read_line(const char* opcode_name) {
    size_t newline = bytes_.find('\n', position_);
    if (newline == std::string_view::npos) read_bytes(bytes_.size() - position_ + 1, opcode_name);
    std::string_view line = bytes_.substr(position_, newline - position_);
    position_ = newline + 1;
    return line;
  }

  // Values and the stack

  PickleValue* make(Kind kind) {
    document_.values_.push_back(std::make_unique<PickleValue>());
    document_.values_.back()->kind = kind;
    return document_.values_.back().get();
  }

  PickleValue* make_int(int64_t value) {
    PickleValue* result = make(Kind::kInt);
    result->integer = value;
    return result;
  }

  PickleValue* make_text(Kind kind, std::string_view text) {
    PickleValue* result = make(kind);
    result->text.assign(text.data(), text.size());
    return result;
  }

  void push(PickleValue* value) {
    if (stack_.size() >= kMaxStackSize) {
      throw malformed("the stack exceeds " + std::to_string(kMaxStackSize) + " entries");
    }
    stack_.push_back(value);
  }

  PickleValue* pop() {
    if (stack_.size() <= stack_floor()) throw malformed(std::string("opcode ") + opcode_name() + " found an empty stack");
    PickleValue* value = stack_.back();
    stack_.pop_back();
    return value;
  }

  PickleValue* top() {
    if (stack_.size() <= stack_floor()) throw malformed(std::string("opcode ") + opcode_name() + " found an empty stack");
    return stack_.back();
  }

  // Entries below the innermost MARK belong to the enclosing frame.
  size_t stack_floor() const { return marks_.empty() ? 0 : marks_.back(); }

  std::vector<PickleValue*> pop_to_mark() {
    if (marks_.empty()) throw malformed(std::string("opcode ") + opcode_name() + " has no matching MARK");
    std::vector<PickleValue*> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }

  // Dispatch

  const char* opcode_name() const;
  bool execute();

  void push_integer_text(std::string_view line);
  void push_long(std::string_view bytes);
  void push_float_text(std::string_view line);
  void push_string(std::string_view text, bool bytes_if_not_utf8);
  std::string decode_raw_unicode_escape(std::string_view line);
  void memo_put(uint64_t index);
  void memo_get(uint64_t index);
  void set_items(PickleValue* dict, const std::vector<PickleValue*>& pairs);
  void push_global(const std::string& module, const std::string& name);
  PickleValue* call(PickleValue* callable, PickleValue* arguments);
  PickleValue* rebuild_tensor(const std::vector<PickleValue*>& arguments, const std::string& function);
  PickleValue* load_persistent(PickleValue* id);
  void build(PickleValue* target, PickleValue* state);
  int64_t expect_int(PickleValue* value, const std::string& what);
  std::string expect_string(PickleValue* value, const std::string& what);
  std::vector<int64_t> expect_int_tuple(PickleValue* value, const std::string& what);

  std::string_view bytes_;
  std::string source_;
  size_t base_offset_ = 0;
  size_t position_ = 0;
  size_t opcode_offset_ = 0;
  uint8_t opcode_ = 0;
  std::vector<PickleValue*> stack_;
  std::vector<size_t> marks_;  // stack sizes at each open MARK
  std::unordered_map<uint64_t, PickleValue*> memo_;
  // Per dict, the position of each string or int key in `entries`, so that SETITEM replaces.
  std::unordered_map<const PickleValue*, std::unordered_map<std::string, size_t>> dict_keys_;
  PickleDocument document_;
};

const char* PickleMachine::opcode_name() const {
  switch (opcode_) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
  }
  return "unknown";
}

// Executes the opcode in `opcode_`, whose arguments start at `position_`. Returns true at STOP.
bool PickleMachine::execute() {
  switch (opcode_) {
    // Framing and protocol
    case 0x80: {
      uint64_t version = read_unsigned(1, "PROTO");
      if (version > 5) throw malformed("unsupported pickle protocol " + std::to_string(version) + " (0 to 5 exist)");
      return false;
    }
    case 0x95:
      // A frame only groups opcodes for buffered reading, and its opcodes follow inline.
      if (read_unsigned(8, "FRAME") > bytes_.size() - position_) {
        throw invalid_input(source_ + ": truncated pickle: FRAME" + where() +
                            " is longer than the rest of the stream (download or copy the file again)");
      }
      return false;
    case '.':
      if (!marks_.empty()) throw malformed("STOP inside an unclosed MARK");
      document_.root_ = pop();
      return true;

    // Stack manipulation
    case '(':
      if (marks_.size() >= kMaxMarkDepth) {
        throw malformed("MARKs nest deeper than " + std::to_string(kMaxMarkDepth) + " levels");
      }
      marks_.push_back(stack_.size());
      return false;
    case '0':
      pop();
      return false;
    case '1':
      pop_to_mark();
      return false;
    case '2':
      push(top());
      return false;

    // Constants and numbers
    case 'N':
      push(make(Kind::kNone));
      return false;
    case 0x88:
    case 0x89: {
      PickleValue* value = make(Kind::kBool);
      value->boolean = opcode_ == 0x88;
      push(value);
      return false;
    }
    case 'J':
      push(make_int(static_cast<int32_t>(read_unsigned(4, "BININT"))));
      return false;
    case 'K':
      push(make_int(static_cast<int64_t>(read_unsigned(1, "BININT1"))));
      return false;
    case 'M':
      push(make_int(static_cast<int64_t>(read_unsigned(2, "BININT2"))));
      return false;
    case 0x8a: {
      uint64_t size = read_unsigned(1, "LONG1");
      push_long(read_bytes(size, "LONG1"));
      return false;
    }
    case 0x8b: {
      auto size = static_cast<int32_t>(read_unsigned(4, "LONG4"));
      if (size < 0) throw malformed("LONG4 has a negative length");
      if (static_cast<size_t>(size) > kMaxIntegerBytes) {
        throw malformed("LONG4 integer of " + std::to_string(size) + " bytes is larger than any torch.save writes");
      }
      push_long(read_bytes(static_cast<uint64_t>(size), "LONG4"));
      return false;
    }
    case 'I':
    case 'L':
      push_integer_text(read_line(opcode_name()));
      return false;
    case 'F':
      push_float_text(read_line("FLOAT"));
      return false;
    case 'G': {
      std::string_view raw = read_bytes(8, "BINFLOAT");
      uint64_t bits = 0;
      for (char byte : raw) bits = (bits << 8) | static_cast<unsigned char>(byte);  // big-endian
      PickleValue* value = make(Kind::kFloat);
      std::memcpy(&value->real, &bits, sizeof(bits));
      push(value);
      return false;
    }

    // Strings and bytes
    case 'X':
      push_string(read_bytes(read_unsigned(4, "BINUNICODE"), "BINUNICODE"), false);
      return false;
    case 0x8c:
      push_string(read_bytes(read_unsigned(1, "SHORT_BINUNICODE"), "SHORT_BINUNICODE"), false);
      return false;
    case 0x8d:
      push_string(read_bytes(read_unsigned(8, "BINUNICODE8"), "BINUNICODE8"), false);
      return false;
    case 'T': {
      auto size = static_cast<int32_t>(read_unsigned(4, "BINSTRING"));
      if (size < 0) throw malformed("BINSTRING has a negative length");
      push_string(read_bytes(static_cast<uint64_t>(size), "BINSTRING"), true);
      return false;
    }
    case 'U':
      push_string(read_bytes(read_unsigned(1, "SHORT_BINSTRING"), "SHORT_BINSTRING"), true);
      return false;
    case 'B':
      push(make_text(Kind::kBytes, read_bytes(read_unsigned(4, "BINBYTES"), "BINBYTES")));
      return false;
    case 'C':
      push(make_text(Kind::kBytes, read_bytes(read_unsigned(1, "SHORT_BINBYTES"), "SHORT_BINBYTES")));
      return false;
    case 0x8e:
      push(make_text(Kind::kBytes, read_bytes(read_unsigned(8, "BINBYTES8"), "BINBYTES8")));
      return false;
    case 0x96:
      push(make_text(Kind::kBytes, read_bytes(read_unsigned(8, "BYTEARRAY8"), "BYTEARRAY8")));
      return false;

    // Containers
    case '}':
      push(make(Kind::kDict));
      return false;
    case ']':
      push(make(Kind::kList));
      return false;
    case ')':
      push(make(Kind::kTuple));
      return false;
    case 0x8f:
      push(make(Kind::kSet));
      return false;
    case 't':
    case 'l':
    case 0x91: {
      PickleValue* value = make(opcode_ == 't' ? Kind::kTuple : opcode_ == 'l' ? Kind::kList : Kind::kSet);
      value->items = pop_to_mark();
      push(value);
      return false;
    }
    case 0x85:
    case 0x86:
    case 0x87: {
      int count = opcode_ - 0x84;
      PickleValue* value = make(Kind::kTuple);
      value->items.resize(count);
      for (int i = count - 1; i >= 0; --i) value->items[i] = pop();
      push(value);
      return false;
    }
    case 'd': {
      PickleValue* dict = make(Kind::kDict);
      set_items(dict, pop_to_mark());
      push(dict);
      return false;
    }
    case 's': {
      PickleValue* value = pop();
      PickleValue* key = pop();
      set_items(top(), {key, value});
      return false;
    }
    case 'u': {
      std::vector<PickleValue*> pairs = pop_to_mark();
      set_items(top(), pairs);
      return false;
    }
    case 'a':
    case 'e': {
      std::vector<PickleValue*> items;
      if (opcode_ == 'a') {
        items.push_back(pop());
      } else {
        items = pop_to_mark();
      }
      PickleValue* list = top();
      if (list->kind != Kind::kList) throw malformed(std::string(opcode_name()) + " on a " + kind_name(list->kind) + ", not a list");
      list->items.insert(list->items.end(), items.begin(), items.end());
      return false;
    }
    case 0x90: {
      std::vector<PickleValue*> items = pop_to_mark();
      PickleValue* set = top();
      if (set->kind != Kind::kSet) throw malformed(std::string("ADDITEMS on a ") + kind_name(set->kind) + ", not a set");
      set->items.insert(set->items.end(), items.begin(), items.end());
      return false;
    }

    // Memo
    case 'q':
      memo_put(read_unsigned(1, "BINPUT"));
      return false;
    case 'r':
      memo_put(read_unsigned(4, "LONG_BINPUT"));
      return false;
    case 0x94:
      memo_put(memo_.size());
      return false;
    case 'h':
      memo_get(read_unsigned(1, "BINGET"));
      return false;
    case 'j':
      memo_get(read_unsigned(4, "LONG_BINGET"));
      return false;
    case 'p':
    case 'g': {
      std::string_view line = read_line(opcode_name());
      uint64_t index = 0;
      auto parsed = std::from_chars(line.data(), line.data() + line.size(), index);
      if (parsed.ec != std::errc() || parsed.ptr != line.data() + line.size()) {
        throw malformed(std::string(opcode_name()) + " has an invalid memo index");
      }
      if (opcode_ == 'p') {
        memo_put(index);
      } else {
        memo_get(index);
      }
      return false;
    }

    // Globals, calls and persistent ids
    case 'c': {
      std::string module(read_line("GLOBAL"));
      std::string name(read_line("GLOBAL"));
      push_global(module, name);
      return false;
    }
    case 0x93: {
      std::string name = expect_string(pop(), "STACK_GLOBAL name");
      std::string module = expect_string(pop(), "STACK_GLOBAL module");
      push_global(module, name);
      return false;
    }
    case 'R': {
      PickleValue* arguments = pop();
      PickleValue* callable = pop();
      push(call(callable, arguments));
      return false;
    }
    case 0x81:
    case 0x92: {
      if (opcode_ == 0x92) {
        PickleValue* keyword_arguments = pop();
        if (!keyword_arguments->is_dict() || !keyword_arguments->entries.empty()) {
          throw rejected(std::string("NEWOBJ_EX") + where() + " passes keyword arguments, which rankone does not support");
        }
      }
      pop();  // OrderedDict.__new__ ignores its arguments
      PickleValue* cls = pop();
      if (cls->kind != Kind::kGlobal || cls->text != kOrderedDict) {
        throw rejected(std::string(opcode_name()) + where() + " creates an instance of '" + cls->to_text() +
                       "', which is not allowed");
      }
      push(make(Kind::kOrderedDict));
      return false;
    }
    case 'b': {
      PickleValue* state = pop();
      build(top(), state);
      return false;
    }
    case 'Q':
      push(load_persistent(pop()));
      return false;

    // Opcodes that import or call code, and forms torch.save never writes
    case 'i':
    case 'o':
    case 0x82:
    case 0x83:
    case 0x84:
      throw rejected(std::string("pickle opcode ") + opcode_name() + where() +
                     " is not allowed because it creates objects by calling code");
    case 'P':
      throw rejected(std::string("pickle opcode PERSID") + where() +
                     " (a text persistent id) is not allowed; torch.save writes tensors with BINPERSID");
    case 'V':
      push_string(decode_raw_unicode_escape(read_line("UNICODE")), false);
      return false;
    case 'S':
    case 0x97:
    case 0x98:
      throw malformed(std::string("opcode ") + opcode_name() + " is not supported (torch.save does not write it)");
  }
  throw malformed("unknown opcode " + hex_byte(opcode_));
}

void PickleMachine::push_integer_text(std::string_view line) {
  // Protocol 0 writes True and False as INT "01" and "00", and LONG ends with 'L'.
  if (opcode_ == 'I' && (line == "00" || line == "01")) {
    PickleValue* value = make(Kind::kBool);
    value->boolean = line == "01";
    push(value);
    return;
  }
  if (opcode_ == 'L' && !line.empty() && line.back() == 'L') line.remove_suffix(1);
  int64_t integer = 0;
  auto parsed = std::from_chars(line.data(), line.data() + line.size(), integer);
  if (parsed.ec == std::errc() && parsed.ptr == line.data() + line.size()) {
    push(make_int(integer));
    return;
  }
  if (parsed.ec != std::errc::result_out_of_range || parsed.ptr != line.data() + line.size()) {
    throw malformed(std::string(opcode_name()) + " has an invalid integer '" + std::string(line) + "'");
  }
  if (line.size() > kMaxIntegerBytes * 2) {
    throw malformed(std::string(opcode_name()) + " integer of " + std::to_string(line.size()) +
                    " digits is larger than any torch.save writes");
  }
  push_long(decimal_to_twos_complement(line));
}


void PickleMachine::push_long(std::string_view bytes) {
  // Little-endian two's complement. Values that fit in int64 become kInt.
  bool negative = !bytes.empty() && (static_cast<unsigned char>(bytes.back()) & 0x80);
  size_t significant = bytes.size();
  while (significant > 0 && static_cast<unsigned char>(bytes[significant - 1]) == (negative ? 0xff : 0x00)) {
    --significant;
  }
  bool fits = significant < 8 || (significant == 8 && ((static_cast<unsigned char>(bytes[7]) & 0x80) != 0) == negative);
  if (!fits) {
    push(make_text(Kind::kBigInt, bytes));
    return;
  }
  uint64_t bits = negative ? ~uint64_t{0} : 0;
  for (size_t i = 0; i < std::min<size_t>(bytes.size(), 8); ++i) {
    bits &= ~(uint64_t{0xff} << (8 * i));
    bits |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  }
  push(make_int(static_cast<int64_t>(bits)));
}

void PickleMachine::push_float_text(std::string_view line) {
  PickleValue* value = make(Kind::kFloat);
  auto parsed = std::from_chars(line.data(), line.data() + line.size(), value->real);
  if (parsed.ec != std::errc() || parsed.ptr != line.data() + line.size()) {
    throw malformed("FLOAT has an invalid number '" + std::string(line) + "'");
  }
  push(value);
}

void PickleMachine::push_string(std::string_view text, bool bytes_if_not_utf8) {
  if (is_valid_utf8(text)) {
    push(make_text(Kind::kString, text));
  } else if (bytes_if_not_utf8) {
    // Python 2 str, which may hold any bytes.
    push(make_text(Kind::kBytes, text));
  } else {
    throw malformed(std::string(opcode_name()) + " string is not valid UTF-8");
  }
}

// Protocol 0 writes str as "raw-unicode-escape": bytes are Latin-1 code points, except
// \uXXXX and \UXXXXXXXX escapes. Returns the UTF-8 text.
std::string PickleMachine::decode_raw_unicode_escape(std::string_view line) {
  std::string text;
  auto append_utf8 = [&](uint32_t code_point) {
    if (code_point > 0x10ffff || (code_point >= 0xd800 && code_point <= 0xdfff)) {
      throw malformed("UNICODE escape of an invalid code point");
    }
    if (code_point < 0x80) {
      text.push_back(static_cast<char>(code_point));
    } else if (code_point < 0x800) {
      text.push_back(static_cast<char>(0xc0 | (code_point >> 6)));
      text.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
    } else if (code_point < 0x10000) {
      text.push_back(static_cast<char>(0xe0 | (code_point >> 12)));
      text.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3f)));
      text.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
    } else {
      text.push_back(static_cast<char>(0xf0 | (code_point >> 18)));
      text.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3f)));
      text.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3f)));
      text.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
    }
  };

  for (size_t i = 0; i < line.size(); ++i) {
    bool escape = line[i] == '\\' && i + 1 < line.size() && (line[i + 1] == 'u' || line[i + 1] == 'U');
    if (!escape) {
      append_utf8(static_cast<unsigned char>(line[i]));
      continue;
    }
    size_t digits = line[i + 1] == 'u' ? 4 : 8;
    uint32_t code_point = 0;
    auto parsed = std::from_chars(line.data() + i + 2, line.data() + std::min(line.size(), i + 2 + digits), code_point, 16);
    if (parsed.ec != std::errc() || parsed.ptr != line.data() + i + 2 + digits) {
      throw malformed("UNICODE has an invalid \\u escape");
    }
    append_utf8(code_point);
    i += 1 + digits;
  }
  return text;
}

void PickleMachine::memo_put(uint64_t index) {
  memo_[index] = top();
}

void PickleMachine::memo_get(uint64_t index) {
  auto found = memo_.find(index);
  if (found == memo_.end()) throw malformed(std::string(opcode_name()) + " of memo entry " + std::to_string(index) + ", which was never stored");
  push(found->second);
}

void PickleMachine::set_items(PickleValue* dict, const std::vector<PickleValue*>& pairs) {
  if (!dict->is_dict()) throw malformed(std::string(opcode_name()) + " on a " + kind_name(dict->kind) + ", not a dict");
  if (pairs.size() % 2 != 0) throw malformed(std::string(opcode_name()) + " has a key without a value");

  std::unordered_map<std::string, size_t>& positions = dict_keys_[dict];
  for (size_t i = 0; i < pairs.size(); i += 2) {
    PickleValue* key = pairs[i];
    PickleValue* value = pairs[i + 1];
    // Python replaces the value of an existing key. Keys other than str and int are kept as
    // separate entries, which only matters for dicts that rankone does not read tensors from.
    std::string lookup;
    if (key->kind == Kind::kString) lookup = "s" + key->text;
    if (key->kind == Kind::kInt) lookup = "i" + std::to_string(key->integer);
    if (!lookup.empty()) {
      auto [found, inserted] = positions.emplace(lookup, dict->entries.size());
      if (!inserted) {
        dict->entries[found->second].second = value;
        continue;
      }
    }
    dict->entries.emplace_back(key, value);
  }
}

void PickleMachine::push_global(const std::string& module, const std::string& name) {
  std::string full_name = module + "." + name;
  if (full_name == kLoadFromBytes) {
    throw rejected("pickle global '" + full_name + "'" + where() +
                   " is not allowed because it runs torch.load on bytes inside the file; save the model with "
                   "torch.save(model.state_dict(), path) instead");
  }
  if (!is_allowed_global(full_name)) throw rejected("pickle global '" + full_name + "'" + where() + " is not allowed");
  push(make_text(Kind::kGlobal, full_name));
}

PickleValue* PickleMachine::call(PickleValue* callable, PickleValue* arguments) {
  if (callable->kind != Kind::kGlobal) {
    throw malformed(std::string("REDUCE calls a ") + kind_name(callable->kind) + ", not a class or function");
  }
  if (arguments->kind != Kind::kTuple) throw malformed("REDUCE arguments of '" + callable->text + "' are not a tuple");
  const std::string& function = callable->text;
  const std::vector<PickleValue*>& args = arguments->items;

  if (function == kOrderedDict) {
    PickleValue* dict = make(Kind::kOrderedDict);
    if (args.empty()) return dict;
    // OrderedDict(iterable of pairs), as some pickles write small dicts.
    if (args.size() != 1 || (args[0]->kind != Kind::kList && args[0]->kind != Kind::kTuple)) {
      throw rejected("OrderedDict" + where() + " is called with arguments other than a list of pairs");
    }
    std::vector<PickleValue*> pairs;
    for (PickleValue* pair : args[0]->items) {
      if (pair->kind != Kind::kTuple || pair->items.size() != 2) throw malformed("OrderedDict item is not a (key, value) pair");
      pairs.push_back(pair->items[0]);
      pairs.push_back(pair->items[1]);
    }
    set_items(dict, pairs);
    return dict;
  }
  if (function == kRebuildTensorV2 || function == kRebuildTensor) return rebuild_tensor(args, function);
  if (function == kRebuildParameter) {
    // _rebuild_parameter(data, requires_grad, backward_hooks)
    if (args.size() != 3 || args[0]->kind != Kind::kTensor || args[1]->kind != Kind::kBool) {
      throw malformed(function + " expects (tensor, requires_grad, backward_hooks)");
    }
    PickleValue* parameter = make(Kind::kTensor);
    parameter->tensor = std::make_unique<PickleTensor>(*args[0]->tensor);
    parameter->tensor->requires_grad = args[1]->boolean;
    return parameter;
  }
  throw rejected("pickle calls '" + function + "'" + where() + ", which is allowed only as a storage type");
}

PickleValue* PickleMachine::rebuild_tensor(const std::vector<PickleValue*>& args, const std::string& function) {
  // _rebuild_tensor(storage, storage_offset, size, stride) and
  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]).
  bool v2 = function == kRebuildTensorV2;
  bool count_ok = v2 ? (args.size() == 6 || args.size() == 7) : args.size() == 4;
  if (!count_ok) throw malformed(function + " has " + std::to_string(args.size()) + " arguments");
  if (args[0]->kind != Kind::kStorage) throw malformed(function + " argument 1 is a " + kind_name(args[0]->kind) + ", not a storage");

  auto tensor = std::make_unique<PickleTensor>();
  tensor->storage = args[0];
  tensor->storage_offset = expect_int(args[1], "tensor storage offset");
  tensor->sizes = expect_int_tuple(args[2], "tensor size");
  tensor->strides = expect_int_tuple(args[3], "tensor stride");
  if (tensor->sizes.size() != tensor->strides.size()) {
    throw malformed("tensor size has " + std::to_string(tensor->sizes.size()) + " dimensions but its stride has " +
                    std::to_string(tensor->strides.size()));
  }
  if (v2) {
    if (args[4]->kind != Kind::kBool) throw malformed(function + " requires_grad is not a bool");
    tensor->requires_grad = args[4]->boolean;
    // Backward hooks and tensor metadata only matter for training, so they are dropped.
    if (!args[5]->is_dict() && args[5]->kind != Kind::kNone) throw malformed(function + " backward_hooks is not a dict");
  }

  PickleValue* value = make(Kind::kTensor);
  value->tensor = std::move(tensor);
  return value;
}

PickleValue* PickleMachine::load_persistent(PickleValue* id) {
  // ('storage', storage_type, key, location, numel) in the zip format, with a sixth item
  // (None or (view_key, offset, view_numel)) in the legacy format.
  if (id->kind != Kind::kTuple || id->items.size() < 5 || id->items.size() > 6 ||
      id->items[0]->kind != Kind::kString || id->items[0]->text != "storage") {
    throw malformed("persistent id " + id->to_text() + " is not a ('storage', type, key, location, size) tuple");
  }
  const std::vector<PickleValue*>& items = id->items;
  if (items[1]->kind != Kind::kGlobal || storage_classes().count(items[1]->text) == 0) {
    throw malformed("persistent id names the storage type " + items[1]->to_text() + ", which is not a storage class");
  }

  auto storage = std::make_unique<PickleStorage>();
  storage->dtype = storage_classes().at(items[1]->text);
  storage->key = expect_string(items[2], "storage key");
  storage->location = expect_string(items[3], "storage location");
  storage->numel = expect_int(items[4], "storage size");
  if (items.size() == 6 && items[5]->kind != Kind::kNone) {
    PickleValue* view = items[5];
    if (view->kind != Kind::kTuple || view->items.size() != 3) throw malformed("storage view is not a (key, offset, size) tuple");
    storage->is_view = true;
    storage->view_key = expect_string(view->items[0], "storage view key");
    storage->view_offset = expect_int(view->items[1], "storage view offset");
    storage->view_numel = expect_int(view->items[2], "storage view size");
  }

  PickleValue* value = make(Kind::kStorage);
  value->storage = std::move(storage);
  return value;
}

void PickleMachine::build(PickleValue* target, PickleValue* state) {
  // BUILD sets instance attributes. A state dict's OrderedDict carries `_metadata` (module
  // versions) this way, which rankone does not need, so attributes of dicts are dropped.
  if (target->is_dict() && (state->kind == Kind::kNone || state->is_dict())) return;
  if (target->kind == Kind::kTensor &&
      (state->kind == Kind::kNone || (state->is_dict() && state->entries.empty()))) {
    return;
  }
  throw rejected(std::string("pickle BUILD") + where() + " sets the state of a " + kind_name(target->kind) +
                 " from a " + kind_name(state->kind) + ", which is not allowed");
}

int64_t PickleMachine::expect_int(PickleValue* value, const std::string& what) {
  if (value->kind != Kind::kInt || value->integer < 0) {
    throw malformed(what + " is " + value->to_text() + ", not a non-negative integer");
  }
  return value->integer;
}

std::string PickleMachine::expect_string(PickleValue* value, const std::string& what) {
  if (value->kind != Kind::kString) throw malformed(what + " is a " + kind_name(value->kind) + ", not a string");
  return value->text;
}

std::vector<int64_t> PickleMachine::expect_int_tuple(PickleValue* value, const std::string& what) {
  if (value->kind != Kind::kTuple) throw malformed(what + " is a " + kind_name(value->kind) + ", not a tuple");
  std::vector<int64_t> result;
  for (PickleValue* item : value->items) result.push_back(expect_int(item, what + " entry"));
  return result;
}

PickleDocument read_pickle(std::string_view bytes, const std::string& source, size_t base_offset) {
  return PickleMachine(bytes, source, base_offset).run();
}

}  // namespace rankone::formats

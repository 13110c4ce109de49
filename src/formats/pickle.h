// A restricted reader for Python pickle streams as torch.save writes them. It builds a tree of
// plain values (None, bool, int, float, str, bytes, list, tuple, set, dict, OrderedDict) and
// references to tensors and their storages, and never calls code named in the stream.
//
//   formats::PickleDocument doc = formats::read_pickle(bytes, "generator.pt");
//   const formats::PickleValue& root = doc.root();   // e.g. a kOrderedDict of kTensor values
//
// Globals are resolved only against a short allow-list (collections.OrderedDict, the
// torch._utils tensor rebuild functions and the typed storage classes). Every other global,
// and every opcode that would call or import code (INST, OBJ, EXT1/2/4, text PERSID), raises an
// invalid-input Error that names the global or the opcode.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rankone::formats {

struct PickleValue;

/// A storage named by a persistent id `('storage', storage_type, key, location, numel[, view])`.
/// The location (such as "cuda:0") is kept only for messages, because every storage loads on the CPU.
struct PickleStorage {
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::string key;
  std::string location;
  int64_t numel = 0;  // elements of the storage named by `key`
  // Legacy-format views: this storage is elements [view_offset, view_offset + view_numel)
  // of storage `key`, under its own name `view_key`.
  bool is_view = false;
  std::string view_key;
  int64_t view_offset = 0;
  int64_t view_numel = 0;
};

/// A tensor that torch._utils._rebuild_tensor(_v2) would build: a strided view of a storage.
/// Offset, sizes and strides are in elements and are not yet checked against the storage.
struct PickleTensor {
  const PickleValue* storage = nullptr;  // a kStorage value
  int64_t storage_offset = 0;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  bool requires_grad = false;
};

/// One node of the value tree. Containers point to other nodes of the same PickleDocument.
struct PickleValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,        // fits in int64: `integer`
    kBigInt,     // does not fit: `text` holds the little-endian two's complement bytes
    kFloat,
    kString,     // UTF-8 in `text`
    kBytes,      // raw bytes in `text`
    kList,
    kTuple,
    kSet,
    kDict,
    kOrderedDict,
    kGlobal,     // an allow-listed class or function, "module.name" in `text`
    kStorage,
    kTensor,
  };

  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0.0;
  std::string text;
  std::vector<PickleValue*> items;                           // list, tuple, set
  std::vector<std::pair<PickleValue*, PickleValue*>> entries;  // dict, ordered dict, in insertion order
  std::unique_ptr<PickleStorage> storage;
  std::unique_ptr<PickleTensor> tensor;

  bool is_dict() const { return kind == Kind::kDict || kind == Kind::kOrderedDict; }
  /// Text of a leaf value for metadata and messages: a string as is, None, True, 3 and 0.5 as
  /// Python prints them, integers beyond int64 in hexadecimal, and a summary such as
  /// "<bytes of length 12>" for bytes, containers, globals, storages and tensors.
  std::string to_text() const;
};

/// The values built from one pickle stream. Owns every node, so nodes may point to each other
/// freely (shared and cyclic references in the stream stay pointers here).
class PickleDocument {
 public:
  const PickleValue& root() const { return *root_; }
  /// Offset just after the STOP opcode, relative to the start of the bytes given to read_pickle.
  size_t end_offset() const { return end_offset_; }
  /// Number of values built, including those not reachable from the root.
  size_t value_count() const { return values_.size(); }
  /// Every storage named by a persistent id, in stream order (one per BINPERSID opcode).
  std::vector<const PickleStorage*> storages() const;

 private:
  friend class PickleMachine;
  std::vector<std::unique_ptr<PickleValue>> values_;
  PickleValue* root_ = nullptr;
  size_t end_offset_ = 0;
};

/// Runs the restricted pickle machine on `bytes` up to the first STOP opcode.
/// `source` names the file (or archive entry) in messages, and `base_offset` is added to the
/// byte offsets they quote. Throws an invalid-input Error for truncated or malformed streams,
/// disallowed globals and opcodes, and streams that exceed the stack or nesting bounds.
PickleDocument read_pickle(std::string_view bytes, const std::string& source, size_t base_offset = 0);

}  // namespace rankone::formats

// PyTorch checkpoints written by torch.save, in the zip format (PyTorch 1.6 and later) and the
// legacy format. Both pickle the object with tensors as persistent ids that name storages,
// and store the raw little-endian storage bytes outside the pickle.
#include "formats/torch_checkpoint.h"

#include "formats/file_io.h"
#include "formats/pickle.h"
#include "formats/zip_archive.h"
#include "rankone/error.h"

#include <ATen/ATen.h>

#include <cstring>
#include <functional>
#include <set>
#include <unordered_map>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "checkpoint storages are little-endian and are copied to tensors without byte swapping");

namespace rankone::formats {

namespace {

using Kind = PickleValue::Kind;

// The legacy format starts with this number pickled as a LONG1 (10 bytes, little-endian).
constexpr char kLegacyMagic[] = "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
constexpr size_t kLegacyMagicSize = 10;
constexpr int64_t kLegacyProtocolVersion = 1001;

// Containers deeper than this are rejected while flattening. Real checkpoints nest a few levels.
constexpr int kMaxNestingDepth = 100;
// Flattening visits shared containers once per reference. This bounds the total visits relative
// to the number of pickled values, so that a stream of containers that each reference the next
// twice cannot make the walk exponential.
constexpr size_t kMaxVisitsPerValue = 16;

std::string shape_text(const std::vector<int64_t>& values) {
  std::string text = "[";
  for (size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  return text + "]";
}

// The tensors and metadata of a pickled object, flattened to dotted names.
class Flattener {
 public:
  Flattener(const std::string& path, size_t value_count)
      : path_(path), max_visits_(kMaxVisitsPerValue * (value_count + 1)) {}

  void flatten(const PickleValue& root) {
    if (root.kind != Kind::kDict && root.kind != Kind::kOrderedDict && root.kind != Kind::kList &&
        root.kind != Kind::kTuple) {
      throw invalid_input(path_ + ": the checkpoint contains a single " + root.to_text() +
                          ", not a dict of tensors (save a state dict, e.g. torch.save(model.state_dict(), path))");
    }
    visit(root, "", 0);
  }

  std::vector<std::pair<std::string, const PickleTensor*>> tensors;
  std::map<std::string, std::string> metadata;

 private:
  void visit(const PickleValue& value, const std::string& name, int depth) {
    if (++visits_ > max_visits_) {
      throw invalid_input(path_ + ": the checkpoint references its containers too many times to flatten "
                                  "(the file is damaged or hostile)");
    }
    if (depth > kMaxNestingDepth) {
      throw invalid_input(path_ + ": containers nest deeper than " + std::to_string(kMaxNestingDepth) + " levels at '" +
                          name + "' (the file is damaged or contains a cycle)");
    }

    switch (value.kind) {
      case Kind::kDict:
      case Kind::kOrderedDict:
        for (const auto& [key, item] : value.entries) visit(*item, join(name, key->to_text()), depth + 1);
        return;
      case Kind::kList:
      case Kind::kTuple:
      case Kind::kSet:
        for (size_t i = 0; i < value.items.size(); ++i) visit(*value.items[i], join(name, std::to_string(i)), depth + 1);
        return;
      case Kind::kTensor:
        claim(name);
        tensors.emplace_back(name, value.tensor.get());
        return;
      default:
        claim(name);
        metadata[name] = value.to_text();
        return;
    }
  }

  static std::string join(const std::string& prefix, const std::string& key) {
    return prefix.empty() ? key : prefix + "." + key;
  }

  void claim(const std::string& name) {
    if (!names_.insert(name).second) {
      throw invalid_input(path_ + ": two entries of the checkpoint flatten to the same name '" + name +
                          "' (rename one of the nested keys)");
    }
  }

  const std::string& path_;
  size_t max_visits_;
  size_t visits_ = 0;
  std::set<std::string> names_;
};

// Returns the data of the root storage `storage.key`: exactly numel * element size bytes.
using StorageBytes = std::function<std::string_view(const PickleStorage& storage)>;

// Builds the flat TensorFile from a pickled object whose storages `storage_bytes` returns.
class TensorAssembler {
 public:
  TensorAssembler(const std::string& path, const StorageBytes& storage_bytes)
      : path_(path), storage_bytes_(storage_bytes) {}

  TensorFile assemble(const PickleDocument& document, TensorFileFormat format) {
    Flattener flattener(path_, document.value_count());
    flattener.flatten(document.root());

    // A storage that backs one tensor exactly can become that tensor without a copy.
    std::unordered_map<const PickleValue*, int> uses;
    for (const auto& item : flattener.tensors) ++uses[item.second->storage];

    TensorFile file;
    file.path = path_;
    file.format = format;
    file.metadata = std::move(flattener.metadata);
    for (const auto& [name, tensor] : flattener.tensors) {
      file.names.push_back(name);
      file.tensors.emplace(name, build_tensor(name, *tensor, uses[tensor->storage] == 1));
    }
    return file;
  }

 private:
  // Returns the storage of `value` as a 1-D tensor of its dtype, reading it once per key.
  at::Tensor storage_tensor(const PickleStorage& storage) {
    auto cached = roots_.find(storage.key);
    at::Tensor root;
    if (cached != roots_.end()) {
      root = cached->second;
      if (root.scalar_type() != storage.dtype || root.numel() != storage.numel) {
        throw invalid_input(path_ + ": storage '" + storage.key + "' is named with two different types or sizes "
                                    "(the file is damaged)");
      }
    } else {
      std::string_view bytes = storage_bytes_(storage);
      root = at::empty({storage.numel}, at::TensorOptions().dtype(storage.dtype));
      if (storage.dtype == at::kBool) check_bool_bytes(storage, bytes);
      if (!bytes.empty()) std::memcpy(root.data_ptr(), bytes.data(), bytes.size());
      roots_.emplace(storage.key, root);
    }
    if (!storage.is_view) return root;

    // Legacy views: elements [view_offset, view_offset + view_numel) of the root storage.
    if (storage.view_offset > storage.numel || storage.view_numel > storage.numel - storage.view_offset) {
      throw invalid_input(path_ + ": storage view '" + storage.view_key + "' (offset " +
                          std::to_string(storage.view_offset) + ", size " + std::to_string(storage.view_numel) +
                          ") reaches past storage '" + storage.key + "' of " + std::to_string(storage.numel) +
                          " elements (the file is damaged)");
    }
    return root.narrow(0, storage.view_offset, storage.view_numel);
  }

  void check_bool_bytes(const PickleStorage& storage, std::string_view bytes) const {
    for (char byte : bytes) {
      if (byte != 0 && byte != 1) {
        throw invalid_input(path_ + ": bool storage '" + storage.key + "' contains the byte " +
                            std::to_string(static_cast<unsigned char>(byte)) +
                            ", but booleans must be 0 or 1 (the file is damaged)");
      }
    }
  }

  at::Tensor build_tensor(const std::string& name, const PickleTensor& tensor, bool sole_user) {
    const PickleStorage& storage = *tensor.storage->storage;
    at::Tensor base = storage_tensor(storage);
    check_bounds(name, tensor, base.numel());

    // The offset of as_strided counts from the start of the underlying memory, which for a
    // legacy storage view lies before the view's first element.
    at::Tensor view = base.as_strided(tensor.sizes, tensor.strides, base.storage_offset() + tensor.storage_offset);
    bool whole_storage = tensor.storage_offset == 0 && view.numel() == base.numel() && view.is_contiguous();
    if (sole_user && whole_storage && !storage.is_view) return view;
    return view.clone(at::MemoryFormat::Contiguous);
  }

  // Rejects a tensor whose last element lies past the end of its storage.
  void check_bounds(const std::string& name, const PickleTensor& tensor, int64_t storage_numel) const {
    int64_t numel = 1;
    int64_t last = tensor.storage_offset;
    bool overflow = false;
    for (size_t i = 0; i < tensor.sizes.size(); ++i) {
      overflow = overflow || __builtin_mul_overflow(numel, tensor.sizes[i], &numel);
      if (tensor.sizes[i] == 0) continue;
      int64_t reach = 0;
      overflow = overflow || __builtin_mul_overflow(tensor.sizes[i] - 1, tensor.strides[i], &reach) ||
                 __builtin_add_overflow(last, reach, &last);
    }
    if (!overflow && (numel == 0 || last < storage_numel)) return;
    throw invalid_input(path_ + ": tensor '" + name + "' with size " + shape_text(tensor.sizes) + ", stride " +
                        shape_text(tensor.strides) + " and offset " + std::to_string(tensor.storage_offset) +
                        " reaches past the end of its storage of " + std::to_string(storage_numel) +
                        " elements (the file is damaged)");
  }

  const std::string& path_;
  const StorageBytes& storage_bytes_;
  std::unordered_map<std::string, at::Tensor> roots_;
};

// Returns numel * element size of `dtype`, or throws when it overflows.
uint64_t storage_byte_size(const std::string& path, const std::string& key, int64_t numel, c10::ScalarType dtype) {
  uint64_t size = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), c10::elementSize(dtype), &size)) {
    throw invalid_input(path + ": storage '" + key + "' claims " + std::to_string(numel) +
                        " elements, more than any file can hold (the file is damaged)");
  }
  return size;
}

}  // namespace

bool looks_like_zip(const std::string& bytes) {
  return bytes.compare(0, 4, "PK\x03\x04", 4) == 0 || bytes.compare(0, 4, "PK\x05\x06", 4) == 0;
}

bool looks_like_pickle(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x80 && bytes[1] >= 2 && bytes[1] <= 5;
}

TensorFile load_torch_zip(const std::string& bytes, const std::string& path) {
  ZipArchive archive(bytes, path);

  // The archive's entries sit in one top-level folder: <folder>/data.pkl, <folder>/data/<key>.
  const ZipEntry* pickle_entry = nullptr;
  for (const ZipEntry& entry : archive.entries()) {
    size_t slash = entry.name.find('/');
    if (slash != std::string::npos && entry.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      pickle_entry = &entry;
      break;
    }
  }
  if (pickle_entry == nullptr) {
    throw invalid_input(path + ": the zip archive has no <folder>/data.pkl entry, so it is not a torch.save "
                               "checkpoint (save the model with torch.save(model.state_dict(), path))");
  }
  std::string folder = pickle_entry->name.substr(0, pickle_entry->name.size() - std::strlen("data.pkl"));
  if (archive.find(folder + "constants.pkl") != nullptr) {
    throw invalid_input(path + ": this is a TorchScript archive (torch.jit.save), which rankone cannot read "
                               "(save the weights with torch.save(model.state_dict(), path))");
  }
  if (const ZipEntry* byte_order = archive.find(folder + "byteorder")) {
    std::string_view order = archive.read(*byte_order);
    if (order != "little") {
      throw invalid_input(path + ": the checkpoint stores tensors in '" + std::string(order) +
                          "' byte order, but rankone reads only little-endian checkpoints");
    }
  }

  PickleDocument document = read_pickle(archive.read(*pickle_entry), path + " (" + pickle_entry->name + ")");

  StorageBytes storage_bytes = [&](const PickleStorage& storage) {
    std::string entry_name = folder + "data/" + storage.key;
    const ZipEntry* entry = archive.find(entry_name);
    if (entry == nullptr) {
      throw invalid_input(path + ": the zip archive has no entry '" + entry_name +
                          "' for a tensor storage (the file is damaged or incomplete)");
    }
    uint64_t needed = storage_byte_size(path, storage.key, storage.numel, storage.dtype);
    std::string_view data = archive.read(*entry);
    if (data.size() < needed) {
      throw invalid_input(path + ": zip entry '" + entry_name + "' has " + std::to_string(data.size()) +
                          " bytes, but its storage of " + std::to_string(storage.numel) + " " +
                          c10::toString(storage.dtype) + " elements needs " + std::to_string(needed) +
                          " (the file is damaged)");
    }
    return data.substr(0, needed);
  };
  return TensorAssembler(path, storage_bytes).assemble(document, TensorFileFormat::kTorchZip);
}

namespace {

// The legacy file: five pickles back to back, then the storages.
class LegacyReader {
 public:
  LegacyReader(const std::string& bytes, const std::string& path) : bytes_(bytes), path_(path) {}

  TensorFile read() {
    check_magic(next_pickle());
    check_protocol(next_pickle());
    check_system_info(next_pickle());
    PickleDocument object = next_pickle();
    std::vector<std::string> keys = storage_keys(next_pickle());
    read_storages(object, keys);

    StorageBytes storage_bytes = [&](const PickleStorage& storage) {
      auto found = storages_.find(storage.key);
      if (found == storages_.end()) {
        throw invalid_input(path_ + ": tensor storage '" + storage.key +
                            "' is missing from the list of stored storages (the file is damaged)");
      }
      return found->second;
    };
    return TensorAssembler(path_, storage_bytes).assemble(object, TensorFileFormat::kTorchLegacy);
  }

 private:
  PickleDocument next_pickle() {
    PickleDocument document = read_pickle(bytes_.substr(offset_), path_, offset_);
    offset_ += document.end_offset();
    return document;
  }

  Error not_legacy(const std::string& problem) const {
    return invalid_input(path_ + ": not a PyTorch checkpoint: " + problem +
                         " (rankone reads files written by torch.save and safetensors files)");
  }

  void check_magic(const PickleDocument& document) const {
    const PickleValue& magic = document.root();
    if (magic.kind != Kind::kBigInt || magic.text != std::string_view(kLegacyMagic, kLegacyMagicSize)) {
      throw not_legacy("the first pickled value is " + magic.to_text() + ", not the torch.save magic number "
                       "0x1950a86a20f9469cfc6c");
    }
  }

  void check_protocol(const PickleDocument& document) const {
    const PickleValue& version = document.root();
    if (version.kind != Kind::kInt || version.integer != kLegacyProtocolVersion) {
      throw invalid_input(path_ + ": unsupported legacy checkpoint protocol version " + version.to_text() +
                          " (rankone reads version 1001; save the checkpoint again with a current torch.save)");
    }
  }

  void check_system_info(const PickleDocument& document) const {
    const PickleValue& info = document.root();
    if (!info.is_dict()) throw not_legacy("the system information is a " + info.to_text() + ", not a dict");
    for (const auto& [key, value] : info.entries) {
      if (key->kind == Kind::kString && key->text == "little_endian" &&
          !(value->kind == Kind::kBool && value->boolean)) {
        throw invalid_input(path_ + ": the checkpoint was written on a big-endian machine, but rankone reads only "
                                    "little-endian checkpoints (save it again on a little-endian machine)");
      }
    }
  }

  std::vector<std::string> storage_keys(const PickleDocument& document) const {
    const PickleValue& list = document.root();
    if (list.kind != Kind::kList) throw not_legacy("the storage key list is a " + list.to_text() + ", not a list");
    std::vector<std::string> keys;
    for (const PickleValue* key : list.items) {
      if (key->kind != Kind::kString) throw not_legacy("a storage key is " + key->to_text() + ", not a string");
      keys.push_back(key->text);
    }
    return keys;
  }

  // Reads, for each key in order, an 8-byte little-endian element count and the raw elements.
  void read_storages(const PickleDocument& object, const std::vector<std::string>& keys) {
    std::unordered_map<std::string, const PickleStorage*> named;
    for (const PickleStorage* storage : object.storages()) named.emplace(storage->key, storage);

    for (const std::string& key : keys) {
      auto found = named.find(key);
      if (found == named.end()) {
        throw invalid_input(path_ + ": storage '" + key + "' is stored but no tensor names it, so its type is unknown "
                                    "(the file is damaged)");
      }
      const PickleStorage& storage = *found->second;
      if (bytes_.size() - offset_ < 8) throw truncated(key, 8);
      uint64_t count = read_little_endian(bytes_.data() + offset_, 8);
      offset_ += 8;
      if (count != static_cast<uint64_t>(storage.numel)) {
        throw invalid_input(path_ + ": storage '" + key + "' holds " + std::to_string(count) + " elements but the "
                            "pickle names " + std::to_string(storage.numel) + " (the file is damaged)");
      }
      uint64_t size = storage_byte_size(path_, key, storage.numel, storage.dtype);
      if (size > bytes_.size() - offset_) throw truncated(key, size);
      storages_[key] = bytes_.substr(offset_, size);
      offset_ += size;
    }
  }

  Error truncated(const std::string& key, uint64_t needed) const {
    return invalid_input(path_ + ": truncated checkpoint: storage '" + key + "' needs " + std::to_string(needed) +
                         " bytes at byte " + std::to_string(offset_) + ", but the file ends at byte " +
                         std::to_string(bytes_.size()) + " (download or copy the file again)");
  }

  std::string_view bytes_;
  const std::string& path_;
  size_t offset_ = 0;
  std::unordered_map<std::string, std::string_view> storages_;
};

}  // namespace

TensorFile load_torch_legacy(const std::string& bytes, const std::string& path) {
  return LegacyReader(bytes, path).read();
}

}  // namespace rankone::formats

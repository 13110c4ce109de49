// safetensors reading and writing. Layout: an 8-byte little-endian header length N, N bytes of
// JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}),
// then the tensor data, with offsets relative to the end of the header.
#include "formats/file_io.h"
#include "formats/safetensors.h"
#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian and is copied to tensors without byte swapping");

namespace rankone {

namespace {

using formats::kMaxSafetensorsHeaderBytes;
using formats::read_little_endian;
using Json = nlohmann::ordered_json;

constexpr char kMetadataKey[] = "__metadata__";

// A safetensors dtype and how it is held in a libtorch 1.13 tensor.
struct DtypeInfo {
  const char* name;
  at::ScalarType scalar_type;
  int stored_bytes;  // element size in the file
};

// U16 and U32 have no libtorch 1.13 dtype, so they are widened to the next larger signed
// type on reading (numpy RandomState streams are stored as U32). Writing never produces them.
constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1}, {"U16", at::kInt, 2},   {"U32", at::kLong, 4},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const DtypeInfo& info : kDtypes) {
    if (name == info.name) return &info;
  }
  return nullptr;
}

const char* dtype_name_for(at::ScalarType type) {
  for (const DtypeInfo& info : kDtypes) {
    if (info.scalar_type == type && at::elementSize(type) == static_cast<size_t>(info.stored_bytes)) {
      return info.name;
    }
  }
  return nullptr;
}

// One tensor entry of the header, validated against the data size.
struct Entry {
  std::string name;
  const DtypeInfo* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

Error header_error(const std::string& source, const std::string& problem) {
  return invalid_input(source + ": invalid safetensors header: " + problem +
                       " (the file is damaged or was not written by a safetensors writer)");
}

// Parses the JSON header, rejecting duplicate top-level keys, which nlohmann would silently merge.
Json parse_header_json(const std::string& source, const char* begin, const char* end) {
  std::set<std::string> top_level_keys;
  std::string duplicate;
  auto on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1 && !top_level_keys.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };

  Json header;
  try {
    header = Json::parse(begin, end, on_event);
  } catch (const nlohmann::json::exception& e) {
    throw header_error(source, std::string("the header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) throw header_error(source, "tensor '" + duplicate + "' appears twice");
  if (!header.is_object()) throw header_error(source, "the header is not a JSON object");
  return header;
}

std::map<std::string, std::string> parse_metadata(const std::string& source, const Json& metadata) {
  if (!metadata.is_object()) throw header_error(source, "__metadata__ is not an object of strings");
  std::map<std::string, std::string> result;
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      throw header_error(source, "__metadata__ value of '" + key + "' is " + value.type_name() +
                                     ", but safetensors metadata values must be strings");
    }
    result[key] = value.get<std::string>();
  }
  return result;
}

Entry parse_entry(const std::string& source, const std::string& name, const Json& description,
                  uint64_t data_size) {
  Entry entry;
  entry.name = name;
  std::string where = "tensor '" + name + "'";
  if (!description.is_object()) throw header_error(source, where + " is not a JSON object");

  // dtype
  auto dtype = description.find("dtype");
  if (dtype == description.end() || !dtype->is_string()) throw header_error(source, where + " has no dtype string");
  entry.dtype = find_dtype(dtype->get<std::string>());
  if (entry.dtype == nullptr) {
    throw invalid_input(source + ": tensor '" + name + "' has unsupported dtype '" + dtype->get<std::string>() +
                        "' (rankone reads F64, F32, F16, BF16, I64, I32, I16, I8, U32, U16, U8 and BOOL; "
                        "convert the tensor to one of these)");
  }

  // shape
  auto shape = description.find("shape");
  if (shape == description.end() || !shape->is_array()) throw header_error(source, where + " has no shape array");
  uint64_t numel = 1;
  bool overflow = false;
  for (const Json& dim : *shape) {
    if (!dim.is_number_unsigned()) throw header_error(source, where + " has a shape entry that is not a non-negative integer");
    uint64_t size = dim.get<uint64_t>();
    if (size > static_cast<uint64_t>(INT64_MAX)) throw header_error(source, where + " has a dimension larger than int64");
    entry.shape.push_back(static_cast<int64_t>(size));
    overflow = overflow || __builtin_mul_overflow(numel, size, &numel);
  }
  uint64_t byte_size = 0;
  overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(entry.dtype->stored_bytes), &byte_size);

  // data_offsets
  auto offsets = description.find("data_offsets");
  if (offsets == description.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    throw header_error(source, where + " has no data_offsets pair of non-negative integers");
  }
  entry.begin = (*offsets)[0].get<uint64_t>();
  entry.end = (*offsets)[1].get<uint64_t>();
  if (entry.begin > entry.end) {
    throw header_error(source, where + " has data_offsets [" + std::to_string(entry.begin) + ", " +
                                   std::to_string(entry.end) + "] with begin after end");
  }
  if (entry.end > data_size) {
    throw header_error(source, where + " has data_offsets [" + std::to_string(entry.begin) + ", " +
                                   std::to_string(entry.end) + "] beyond the " + std::to_string(data_size) +
                                   " bytes of data (the file may be truncated)");
  }
  if (overflow || byte_size != entry.end - entry.begin) {
    throw header_error(source, where + " has shape " + shape->dump() + " of " + dtype->get<std::string>() +
                                   ", which needs " + (overflow ? std::string("more than 2^64") : std::to_string(byte_size)) +
                                   " bytes, but its data_offsets span " + std::to_string(entry.end - entry.begin));
  }
  return entry;
}

// Rejects entries whose byte ranges share any byte. Empty ranges overlap nothing.
void check_no_overlap(const std::string& source, std::vector<const Entry*> entries) {
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  const Entry* previous = nullptr;
  for (const Entry* entry : entries) {
    if (entry->begin == entry->end) continue;
    if (previous != nullptr && entry->begin < previous->end) {
      throw header_error(source, "tensors '" + previous->name + "' and '" + entry->name +
                                     "' have overlapping data_offsets");
    }
    previous = entry;
  }
}

at::Tensor read_tensor(const std::string& source, const Entry& entry, const char* data) {
  const char* bytes = data + entry.begin;
  at::Tensor tensor = at::empty(entry.shape, at::TensorOptions().dtype(entry.dtype->scalar_type));
  int64_t numel = tensor.numel();

  if (entry.dtype->scalar_type == at::kBool) {
    for (int64_t i = 0; i < numel; ++i) {
      if (bytes[i] != 0 && bytes[i] != 1) {
        throw invalid_input(source + ": BOOL tensor '" + entry.name + "' contains the byte " +
                            std::to_string(static_cast<unsigned char>(bytes[i])) +
                            ", but booleans must be 0 or 1 (the file is damaged)");
      }
    }
  }

  if (std::strcmp(entry.dtype->name, "U16") == 0) {
    int32_t* out = tensor.data_ptr<int32_t>();
    for (int64_t i = 0; i < numel; ++i) out[i] = static_cast<int32_t>(read_little_endian(bytes + 2 * i, 2));
  } else if (std::strcmp(entry.dtype->name, "U32") == 0) {
    int64_t* out = tensor.data_ptr<int64_t>();
    for (int64_t i = 0; i < numel; ++i) out[i] = static_cast<int64_t>(read_little_endian(bytes + 4 * i, 4));
  } else if (numel > 0) {
    std::memcpy(tensor.data_ptr(), bytes, entry.end - entry.begin);
  }
  return tensor;
}

}  // namespace

namespace formats {

bool looks_like_safetensors(const std::string& bytes) {
  if (bytes.size() < 9) return false;
  // The header length is not checked here, so that parse_safetensors reports a bad one.
  return bytes[8] == '{';
}

}  // namespace formats

TensorFile parse_safetensors(const std::string& bytes, const std::string& source_name) {
  const std::string& source = source_name;

  // header length
  if (bytes.size() < 8) {
    throw invalid_input(source + ": truncated safetensors file: " + std::to_string(bytes.size()) +
                        " bytes, shorter than the 8-byte header length (download or copy the file again)");
  }
  uint64_t header_size = read_little_endian(bytes.data(), 8);
  if (header_size > kMaxSafetensorsHeaderBytes) {
    throw header_error(source, "header length " + std::to_string(header_size) + " exceeds the maximum of " +
                                   std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (header_size > bytes.size() - 8) {
    throw invalid_input(source + ": truncated safetensors file: the header length is " + std::to_string(header_size) +
                        " bytes but only " + std::to_string(bytes.size() - 8) +
                        " bytes follow (download or copy the file again)");
  }
  const char* header_begin = bytes.data() + 8;
  const char* data = header_begin + header_size;
  uint64_t data_size = bytes.size() - 8 - header_size;

  // header entries
  Json header = parse_header_json(source, header_begin, data);
  TensorFile file;
  file.path = source;
  file.format = TensorFileFormat::kSafetensors;
  std::vector<Entry> entries;
  for (const auto& [name, description] : header.items()) {
    if (name == kMetadataKey) {
      file.metadata = parse_metadata(source, description);
    } else {
      entries.push_back(parse_entry(source, name, description, data_size));
    }
  }
  std::vector<const Entry*> entry_pointers;
  for (const Entry& entry : entries) entry_pointers.push_back(&entry);
  check_no_overlap(source, entry_pointers);

  // tensors
  for (const Entry& entry : entries) {
    file.names.push_back(entry.name);
    file.tensors.emplace(entry.name, read_tensor(source, entry, data));
  }
  return file;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // header
  Json header = Json::object();
  if (!metadata.empty()) {
    Json metadata_json = Json::object();
    for (const auto& [key, value] : metadata) metadata_json[key] = value;
    header[kMetadataKey] = metadata_json;
  }
  std::vector<at::Tensor> contiguous;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == kMetadataKey) {
      throw invalid_input(path + ": cannot save a tensor named '" + name + "' (choose a non-empty name other than " +
                          kMetadataKey + ")");
    }
    if (!seen.insert(name).second) {
      throw invalid_input(path + ": cannot save two tensors named '" + name + "' (tensor names must be unique)");
    }
    if (!tensor.defined()) throw invalid_input(path + ": cannot save tensor '" + name + "' because it is undefined");
    const char* dtype = dtype_name_for(tensor.scalar_type());
    if (dtype == nullptr) {
      throw invalid_input(path + ": cannot save tensor '" + name + "' of dtype " +
                          std::string(c10::toString(tensor.scalar_type())) +
                          " (safetensors supports float64/32/16, bfloat16, int64/32/16/8, uint8 and bool; convert it)");
    }
    at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
    uint64_t byte_size = static_cast<uint64_t>(cpu.numel()) * cpu.element_size();
    header[name] = {{"dtype", dtype}, {"shape", cpu.sizes().vec()}, {"data_offsets", {offset, offset + byte_size}}};
    offset += byte_size;
    contiguous.push_back(std::move(cpu));
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  // bytes
  std::string bytes;
  bytes.reserve(8 + header_text.size() + offset);
  uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((header_size >> (8 * i)) & 0xff));
  bytes += header_text;
  for (const at::Tensor& tensor : contiguous) {
    bytes.append(static_cast<const char*>(tensor.data_ptr()), tensor.numel() * tensor.element_size());
  }
  formats::write_file_atomically(path, bytes);
}

}  // namespace rankone

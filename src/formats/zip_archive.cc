// Record layouts follow PKWARE's APPNOTE.TXT (section 4.3): local file headers, the central
// directory, the end of central directory record and its zip64 variants. All fields are little-endian.
#include "formats/zip_archive.h"

#include "formats/file_io.h"
#include "rankone/error.h"

#include <array>

namespace rankone::formats {

namespace {

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;

constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kMaxCommentSize = 0xffff;

constexpr uint16_t kMethodStored = 0;
constexpr uint16_t kFlagEncrypted = 0x0001;

const std::array<uint32_t, 256>& crc32_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> result{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      result[n] = c;
    }
    return result;
  }();
  return table;
}

}  // namespace

uint32_t crc32(std::string_view data) {
  const std::array<uint32_t, 256>& table = crc32_table();
  uint32_t c = 0xffffffffu;
  for (char byte : data) c = table[(c ^ static_cast<unsigned char>(byte)) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

namespace {

// Bounds-checked little-endian field access for one record of the archive.
class RecordReader {
 public:
  RecordReader(std::string_view bytes, const std::string& source) : bytes_(bytes), source_(source) {}

  // Reads a field of `size` bytes at `offset`, or throws naming the record.
  uint64_t field(uint64_t offset, int size, const std::string& record) const {
    if (offset > bytes_.size() || static_cast<uint64_t>(size) > bytes_.size() - offset) {
      throw truncated(record);
    }
    return read_little_endian(bytes_.data() + offset, size);
  }

  Error truncated(const std::string& record) const {
    return invalid_input(source_ + ": truncated zip archive: the " + record +
                         " lies beyond the end of the file (download or copy the file again)");
  }

 private:
  std::string_view bytes_;
  const std::string& source_;
};

}  // namespace

ZipArchive::ZipArchive(std::string_view bytes, std::string source) : bytes_(bytes), source_(std::move(source)) {
  RecordReader reader(bytes_, source_);

  // The end of central directory record sits in the last 22 + 65535 bytes (it ends with a comment).
  if (bytes_.size() < kEndSize) throw reader.truncated("end of central directory record");
  uint64_t end = bytes_.size() - kEndSize;
  uint64_t lowest = end > kMaxCommentSize ? end - kMaxCommentSize : 0;
  while (reader.field(end, 4, "end record") != kEndSignature) {
    if (end == lowest) {
      throw invalid_input(source_ + ": truncated zip archive: the end of central directory record is missing "
                                    "(download or copy the file again)");
    }
    --end;
  }
  uint64_t disk = reader.field(end + 4, 2, "end record");
  uint64_t count = reader.field(end + 10, 2, "end record");
  uint64_t directory_size = reader.field(end + 12, 4, "end record");
  uint64_t directory_offset = reader.field(end + 16, 4, "end record");

  // Zip64: the classic fields hold all-ones and the real values are in the zip64 end record.
  if (count == 0xffff || directory_size == 0xffffffff || directory_offset == 0xffffffff) {
    if (end < kZip64LocatorSize || reader.field(end - kZip64LocatorSize, 4, "zip64 locator") != kZip64LocatorSignature) {
      throw invalid_input(source_ + ": invalid zip archive: a zip64 archive without its zip64 locator "
                                    "(the file is damaged)");
    }
    uint64_t zip64_end = reader.field(end - kZip64LocatorSize + 8, 8, "zip64 locator");
    if (reader.field(zip64_end, 4, "zip64 end record") != kZip64EndSignature) {
      throw invalid_input(source_ + ": invalid zip archive: the zip64 end record is missing (the file is damaged)");
    }
    disk = reader.field(zip64_end + 16, 4, "zip64 end record");
    count = reader.field(zip64_end + 32, 8, "zip64 end record");
    directory_size = reader.field(zip64_end + 40, 8, "zip64 end record");
    directory_offset = reader.field(zip64_end + 48, 8, "zip64 end record");
    if (zip64_end + kZip64EndSize > bytes_.size()) throw reader.truncated("zip64 end record");
  }
  if (disk != 0) {
    throw invalid_input(source_ + ": zip archives split over several files are not supported (join the parts first)");
  }
  read_central_directory(directory_offset, directory_size, count);
}

void ZipArchive::read_central_directory(uint64_t offset, uint64_t size, uint64_t count) {
  RecordReader reader(bytes_, source_);
  if (offset > bytes_.size() || size > bytes_.size() - offset) throw reader.truncated("central directory");
  if (count > size / kCentralHeaderSize) {
    throw invalid_input(source_ + ": invalid zip archive: " + std::to_string(count) + " entries cannot fit in a " +
                        std::to_string(size) + "-byte central directory (the file is damaged)");
  }

  uint64_t position = offset;
  for (uint64_t i = 0; i < count; ++i) {
    if (reader.field(position, 4, "central directory") != kCentralHeaderSignature) {
      throw invalid_input(source_ + ": invalid zip archive: central directory entry " + std::to_string(i) +
                          " has a bad signature (the file is damaged)");
    }
    uint64_t flags = reader.field(position + 8, 2, "central directory");
    uint64_t method = reader.field(position + 10, 2, "central directory");
    ZipEntry entry;
    entry.crc32 = static_cast<uint32_t>(reader.field(position + 16, 4, "central directory"));
    uint64_t compressed_size = reader.field(position + 20, 4, "central directory");
    entry.size = reader.field(position + 24, 4, "central directory");
    uint64_t name_size = reader.field(position + 28, 2, "central directory");
    uint64_t extra_size = reader.field(position + 30, 2, "central directory");
    uint64_t comment_size = reader.field(position + 32, 2, "central directory");
    uint64_t local_offset = reader.field(position + 42, 4, "central directory");
    uint64_t next = position + kCentralHeaderSize + name_size + extra_size + comment_size;
    if (next > offset + size) throw reader.truncated("central directory entry " + std::to_string(i));
    entry.name.assign(bytes_.data() + position + kCentralHeaderSize, name_size);

    // The zip64 extra field holds, in this order, each of these fields that is all-ones above.
    uint64_t extra = position + kCentralHeaderSize + name_size;
    uint64_t extra_end = extra + extra_size;
    while (extra + 4 <= extra_end) {
      uint64_t id = reader.field(extra, 2, "extra field");
      uint64_t length = reader.field(extra + 2, 2, "extra field");
      if (extra + 4 + length > extra_end) break;
      if (id == kZip64ExtraId) {
        uint64_t field = extra + 4;
        for (uint64_t* value : {&entry.size, &compressed_size, &local_offset}) {
          if (*value != 0xffffffff) continue;
          if (field + 8 > extra + 4 + length) throw reader.truncated("zip64 extra field of " + entry.name);
          *value = reader.field(field, 8, "zip64 extra field");
          field += 8;
        }
      }
      extra += 4 + length;
    }

    // Only stored, unencrypted entries can be read without a decompressor.
    if (flags & kFlagEncrypted) {
      throw invalid_input(source_ + ": zip entry '" + entry.name + "' is encrypted (save the checkpoint again with torch.save)");
    }
    if (method != kMethodStored || compressed_size != entry.size) {
      throw invalid_input(source_ + ": zip entry '" + entry.name + "' is compressed (method " + std::to_string(method) +
                          "), but rankone reads only uncompressed archives as torch.save writes them "
                          "(save the checkpoint again with torch.save)");
    }

    // The local header repeats the name and may carry its own extra field (torch.save pads
    // with it so that tensor data starts at a 64-byte boundary).
    if (reader.field(local_offset, 4, "local header of " + entry.name) != kLocalHeaderSignature) {
      throw invalid_input(source_ + ": invalid zip archive: the local header of '" + entry.name +
                          "' has a bad signature (the file is damaged)");
    }
    uint64_t local_name_size = reader.field(local_offset + 26, 2, "local header");
    uint64_t local_extra_size = reader.field(local_offset + 28, 2, "local header");
    entry.data_offset = local_offset + kLocalHeaderSize + local_name_size + local_extra_size;
    if (entry.data_offset > bytes_.size() || entry.size > bytes_.size() - entry.data_offset) {
      throw reader.truncated("data of entry '" + entry.name + "'");
    }

    if (!index_.emplace(entry.name, entries_.size()).second) {
      throw invalid_input(source_ + ": invalid zip archive: the entry '" + entry.name + "' appears twice (the file is damaged)");
    }
    entries_.push_back(std::move(entry));
    position = next;
  }
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  auto found = index_.find(name);
  return found == index_.end() ? nullptr : &entries_[found->second];
}

std::string_view ZipArchive::read(const ZipEntry& entry) const {
  std::string_view data = bytes_.substr(entry.data_offset, entry.size);
  if (crc32(data) != entry.crc32) {
    throw invalid_input(source_ + ": zip entry '" + entry.name +
                        "' fails its CRC-32 check (the file is damaged; download or copy it again)");
  }
  return data;
}

}  // namespace rankone::formats

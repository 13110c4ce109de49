// A reader for uncompressed ("stored") zip archives held in memory, as torch.save writes them
// since PyTorch 1.6. It checks every offset and size against the archive and every entry's
// CRC-32, and reads zip64 archives (those over 4 GiB or with more than 65535 entries).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace rankone::formats {

/// One file of the archive.
struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // from the start of the archive
  uint64_t size = 0;
  uint32_t crc32 = 0;
};

class ZipArchive {
 public:
  /// Parses the central directory of `bytes`, which must outlive the archive. `source` names the
  /// file in messages. Throws an invalid-input Error for truncated or malformed archives and for
  /// compressed or encrypted entries.
  ZipArchive(std::string_view bytes, std::string source);

  /// Entries in central directory order.
  const std::vector<ZipEntry>& entries() const { return entries_; }
  /// Returns the entry named `name`, or nullptr.
  const ZipEntry* find(const std::string& name) const;
  /// Returns the data of `entry` after checking its CRC-32. Throws an invalid-input Error on mismatch.
  std::string_view read(const ZipEntry& entry) const;

 private:
  void read_central_directory(uint64_t offset, uint64_t size, uint64_t count);
  std::string_view bytes_;
  std::string source_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> index_;  // entry name -> position in entries_
};

/// CRC-32 (the polynomial of zip, gzip and PNG) of `data`.
uint32_t crc32(std::string_view data);

}  // namespace rankone::formats

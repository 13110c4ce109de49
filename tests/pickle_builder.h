// Builds pickle byte streams opcode by opcode, for tests that need small valid or hostile pickles.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rankone::testing {

/// Appends protocol 2 opcodes. Each method returns *this, so calls chain:
///   PickleBuilder().proto().global("os", "system").text("echo").tuple1().reduce().stop().bytes()
class PickleBuilder {
 public:
  PickleBuilder& op(uint8_t opcode) {
    bytes_.push_back(static_cast<char>(opcode));
    return *this;
  }
  PickleBuilder& raw(const std::string& data) {
    bytes_ += data;
    return *this;
  }
  PickleBuilder& little_endian(uint64_t value, int size) {
    for (int i = 0; i < size; ++i) bytes_.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
    return *this;
  }

  PickleBuilder& proto(uint8_t version = 2) { return op(0x80).op(version); }
  PickleBuilder& stop() { return op('.'); }
  PickleBuilder& mark() { return op('('); }
  PickleBuilder& none() { return op('N'); }
  PickleBuilder& boolean(bool value) { return op(value ? 0x88 : 0x89); }
  PickleBuilder& integer(int64_t value) {
    if (value >= 0 && value < 256) return op('K').little_endian(static_cast<uint64_t>(value), 1);
    if (value >= INT32_MIN && value <= INT32_MAX) return op('J').little_endian(static_cast<uint32_t>(value), 4);
    return op(0x8a).op(8).little_endian(static_cast<uint64_t>(value), 8);
  }
  PickleBuilder& text(const std::string& value) { return op('X').little_endian(value.size(), 4).raw(value); }
  PickleBuilder& global(const std::string& module, const std::string& name) {
    return op('c').raw(module + "\n" + name + "\n");
  }
  PickleBuilder& empty_dict() { return op('}'); }
  PickleBuilder& empty_tuple() { return op(')'); }
  PickleBuilder& tuple() { return op('t'); }
  PickleBuilder& tuple1() { return op(0x85); }
  PickleBuilder& tuple2() { return op(0x86); }
  PickleBuilder& setitem() { return op('s'); }
  PickleBuilder& setitems() { return op('u'); }
  PickleBuilder& reduce() { return op('R'); }
  PickleBuilder& build() { return op('b'); }
  PickleBuilder& binpersid() { return op('Q'); }
  PickleBuilder& put(uint8_t index) { return op('q').op(index); }
  PickleBuilder& get(uint8_t index) { return op('h').op(index); }

  /// A tuple of small non-negative integers, such as a tensor size or stride.
  PickleBuilder& int_tuple(const std::vector<int64_t>& values) {
    mark();
    for (int64_t value : values) integer(value);
    return tuple();
  }

  /// The persistent id ('storage', torch.<storage_class>, key, location, numel) of the zip format.
  PickleBuilder& storage(const std::string& storage_class, const std::string& key, int64_t numel,
                         const std::string& location = "cpu") {
    mark().text("storage").global("torch", storage_class).text(key).text(location).integer(numel).tuple();
    return binpersid();
  }

  /// torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()).
  PickleBuilder& tensor(const std::string& storage_class, const std::string& key, int64_t storage_numel,
                        int64_t offset, const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    storage(storage_class, key, storage_numel).integer(offset).int_tuple(size).int_tuple(stride).boolean(false);
    global("collections", "OrderedDict").empty_tuple().reduce();
    return tuple().reduce();
  }

  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

}  // namespace rankone::testing

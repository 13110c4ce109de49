#include "models/scratch_pool.h"

#include "rankone/error.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace rankone {

namespace {

constexpr size_t kMinPooledBytes = size_t{1} << 20;
constexpr size_t kMaxKeptBytes = size_t{1} << 30;
constexpr size_t kAlignment = 64;

class ScratchPool {
 public:
  // Returns a block of at least `bytes`, and its size in `block_bytes`.
  void* acquire(size_t bytes, size_t& block_bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_blocks_.lower_bound(bytes);
      if (found != free_blocks_.end() && found->first <= 2 * bytes) {
        void* block = found->second;
        block_bytes = found->first;
        kept_bytes_ -= block_bytes;
        free_blocks_.erase(found);
        return block;
      }
    }
    block_bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* block = std::aligned_alloc(kAlignment, block_bytes);
    if (!block) {
      throw Error(ErrorKind::kInternal, "out of memory: could not allocate " + std::to_string(block_bytes) +
                                            " bytes for an intermediate tensor (try a smaller batch)");
    }
    return block;
  }

  void release(void* block, size_t block_bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (kept_bytes_ + block_bytes <= kMaxKeptBytes) {
        free_blocks_.emplace(block_bytes, block);
        kept_bytes_ += block_bytes;
        return;
      }
    }
    std::free(block);
  }

  size_t kept_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_bytes_;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;  // block size -> block
  size_t kept_bytes_ = 0;
};

// Never destroyed, because tensors freed during static destruction still return blocks.
ScratchPool& pool() {
  static ScratchPool* instance = new ScratchPool();
  return *instance;
}

}  // namespace

torch::Tensor scratch_empty(at::IntArrayRef sizes) {
  int64_t count = 1;
  for (int64_t size : sizes) count *= size;
  size_t bytes = static_cast<size_t>(count) * sizeof(float);
  if (bytes < kMinPooledBytes) return at::empty(sizes, at::kFloat);

  size_t block_bytes = 0;
  void* block = pool().acquire(bytes, block_bytes);
  return at::from_blob(
      block, sizes, [block_bytes](void* data) { pool().release(data, block_bytes); }, at::kFloat);
}

size_t scratch_pool_bytes() { return pool().kept_bytes(); }

}  // namespace rankone

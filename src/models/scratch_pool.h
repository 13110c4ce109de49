// Float32 tensors for large intermediate results whose memory is kept for reuse once they
// are freed, so that a forward pass does not fault in fresh pages for every layer.
#pragma once

#include <torch/types.h>

#include <cstddef>

namespace rankone {

/// An uninitialised float32 CPU tensor of `sizes`. Tensors of at least 1 MiB take their
/// memory from a process-wide pool. The pool keeps the blocks of freed tensors, up to 1 GiB
/// in total, and hands a block to a later request of half its size or more. Thread safe.
torch::Tensor scratch_empty(at::IntArrayRef sizes);

/// Bytes of freed blocks the pool keeps now.
size_t scratch_pool_bytes();

}  // namespace rankone

// Internal entry points of the PyTorch checkpoint reader, used by the format detection in tensor_file.cc.
#pragma once

#include "rankone/formats/tensor_file.h"

#include <string>

namespace rankone::formats {

/// Whether `bytes` starts with a zip local file header ("PK\x03\x04") or an empty zip's end record.
bool looks_like_zip(const std::string& bytes);

/// Whether `bytes` starts with a pickle protocol marker (0x80, then a version from 2 to 5).
bool looks_like_pickle(const std::string& bytes);

/// Reads a torch.save zip checkpoint (PyTorch 1.6 and later) held in `bytes`; `path` names it in messages.
TensorFile load_torch_zip(const std::string& bytes, const std::string& path);

/// Reads a legacy torch.save checkpoint (before PyTorch 1.6, or `_use_new_zipfile_serialization=False`).
TensorFile load_torch_legacy(const std::string& bytes, const std::string& path);

}  // namespace rankone::formats

// Masks painted on generated images: PNG data URLs in, float maps at a layer's
// resolution out, resized exactly as the reference tool (Pillow) does.
#pragma once

#include "rankone/formats/image.h"
#include "rankone/models/generator.h"

#include <torch/types.h>

#include <string>

namespace rankone {

/// Decodes standard base64 (padding optional, whitespace ignored). Throws an invalid-input Error.
std::string base64_decode(const std::string& text, const std::string& source);
std::string base64_encode(const std::string& bytes);

/// Decodes a `data:image/png;base64,...` URL into an 8-bit mask [H, W]: the red channel of
/// the PNG with alpha dropped (painted pixels are white). Throws an invalid-input Error naming
/// `source` for a URL that is not a base64 PNG.
torch::Tensor decode_mask_url(const std::string& url, const std::string& source);

/// Encodes an 8-bit or [0, 1] float mask [H, W] as a white-on-transparent RGBA PNG data URL.
std::string encode_mask_url(const torch::Tensor& mask);

/// Resizes an 8-bit map [H, W] to [height, width] with Pillow's BILINEAR filter bit for bit
/// (antialiased, separable, horizontal pass first, each pass rounded to 8 bits) and returns
/// float values in [0, 1].
torch::Tensor resize_mask(const torch::Tensor& mask_u8, int64_t height, int64_t width);

/// Bounding box of the pixels > 0 of a float mask [H, W]; empty when no pixel is set.
Box mask_bounds(const torch::Tensor& mask);

}  // namespace rankone

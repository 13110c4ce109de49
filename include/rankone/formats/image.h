// 8-bit RGB(A) images: conversion from generator tensors, grids, PNG encoding
// and decoding, and the few drawing primitives the pictures need.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace rankone {

/// Interleaved 8-bit pixels, row-major.
struct Image {
  int width = 0, height = 0, channels = 3;
  std::vector<uint8_t> pixels;

  Image() = default;
  Image(int w, int h, int c, uint8_t fill = 0) : width(w), height(h), channels(c), pixels(size_t(w) * h * c, fill) {}
  uint8_t* at(int x, int y) { return pixels.data() + (size_t(y) * width + x) * channels; }
  const uint8_t* at(int x, int y) const { return pixels.data() + (size_t(y) * width + x) * channels; }
};

/// Converts one generator image [3, H, W] in [-1, 1] to 8-bit RGB:
/// round(clamp((x + 1) * 127.5, 0, 255)), rounding half to even as torch.round does.
Image tensor_to_image(const torch::Tensor& chw);

/// Enlarges by an integer factor with nearest-neighbour sampling (keeps pixels crisp).
Image upscale(const Image& image, int factor);

/// Tiles images row by row, `columns` per row, with `padding` pixels of `background` between them.
Image make_grid(const std::vector<Image>& images, int columns, int padding = 2, uint8_t background = 255);

/// Draws a 1-pixel rectangle outline; coordinates are clipped to the image.
void draw_rectangle(Image& image, int left, int top, int right, int bottom, const uint8_t rgb[3]);

/// Outlines the boundary of a binary mask ([H, W] bool or float > 0.5, same size as the image).
void draw_mask_outline(Image& image, const torch::Tensor& mask, const uint8_t rgb[3]);

/// Blends a heatmap ([H, W] in [0, 1], same size as the image) over the image in red-yellow.
void overlay_heatmap(Image& image, const torch::Tensor& heat, float opacity = 0.55f);

/// Encodes as PNG bytes.
std::string encode_png(const Image& image);
/// Writes a PNG atomically (temporary file in the same folder, then rename).
void write_png(const std::string& path, const Image& image);
/// Decodes PNG bytes to RGBA (4 channels). Throws an invalid-input Error naming `source`.
Image decode_png_rgba(const std::string& bytes, const std::string& source);

/// Writes `bytes` to `path` atomically: a temporary file beside it, then rename.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace rankone

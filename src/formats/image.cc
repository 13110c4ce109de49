#include "rankone/formats/image.h"

#include "rankone/error.h"
#include "formats/png_decoder.h"

#include <ATen/ATen.h>
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

namespace rankone {

Image tensor_to_image(const torch::Tensor& chw) {
  if (chw.dim() != 3 || chw.size(0) != 3) {
    throw invalid_input("expected an image tensor [3, H, W], got " + std::to_string(chw.dim()) + " dimensions");
  }
  at::Tensor bytes = at::round(at::clamp((chw.detach().to(at::kFloat).cpu() + 1.0) * 127.5, 0.0, 255.0))
                         .to(at::kByte)
                         .permute({1, 2, 0})
                         .contiguous();
  Image image(static_cast<int>(chw.size(2)), static_cast<int>(chw.size(1)), 3);
  std::copy(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel(), image.pixels.begin());
  return image;
}

Image upscale(const Image& image, int factor) {
  if (factor <= 1) return image;
  Image out(image.width * factor, image.height * factor, image.channels);
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      std::copy_n(image.at(x / factor, y / factor), image.channels, out.at(x, y));
    }
  }
  return out;
}

Image make_grid(const std::vector<Image>& images, int columns, int padding, uint8_t background) {
  if (images.empty()) throw invalid_input("cannot make a grid of zero images");
  columns = std::max(1, std::min<int>(columns, static_cast<int>(images.size())));
  int rows = (static_cast<int>(images.size()) + columns - 1) / columns;
  int cell_w = 0, cell_h = 0, channels = images[0].channels;
  for (const Image& image : images) {
    cell_w = std::max(cell_w, image.width);
    cell_h = std::max(cell_h, image.height);
  }
  Image grid(columns * cell_w + (columns - 1) * padding, rows * cell_h + (rows - 1) * padding, channels, background);
  for (size_t i = 0; i < images.size(); ++i) {
    int x0 = static_cast<int>(i % columns) * (cell_w + padding);
    int y0 = static_cast<int>(i / columns) * (cell_h + padding);
    const Image& image = images[i];
    for (int y = 0; y < image.height; ++y) {
      std::copy_n(image.at(0, y), size_t(image.width) * channels, grid.at(x0, y0 + y));
    }
  }
  return grid;
}

void draw_rectangle(Image& image, int left, int top, int right, int bottom, const uint8_t rgb[3]) {
  auto put = [&](int x, int y) {
    if (x < 0 || y < 0 || x >= image.width || y >= image.height) return;
    std::copy_n(rgb, std::min(3, image.channels), image.at(x, y));
  };
  for (int x = left; x <= right; ++x) {
    put(x, top);
    put(x, bottom);
  }
  for (int y = top; y <= bottom; ++y) {
    put(left, y);
    put(right, y);
  }
}

void draw_mask_outline(Image& image, const torch::Tensor& mask, const uint8_t rgb[3]) {
  at::Tensor inside = (mask.to(at::kFloat) > 0.5).contiguous();
  if (inside.size(0) != image.height || inside.size(1) != image.width) {
    throw invalid_input("mask outline: mask size does not match the image");
  }
  const bool* m = inside.data_ptr<bool>();
  auto in = [&](int x, int y) {
    return x >= 0 && y >= 0 && x < image.width && y < image.height && m[size_t(y) * image.width + x];
  };
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      if (in(x, y) && (!in(x - 1, y) || !in(x + 1, y) || !in(x, y - 1) || !in(x, y + 1))) {
        std::copy_n(rgb, std::min(3, image.channels), image.at(x, y));
      }
    }
  }
}

void overlay_heatmap(Image& image, const torch::Tensor& heat, float opacity) {
  at::Tensor h = heat.to(at::kFloat).clamp(0, 1).contiguous();
  if (h.size(0) != image.height || h.size(1) != image.width) {
    throw invalid_input("heatmap size does not match the image");
  }
  const float* values = h.data_ptr<float>();
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      float v = values[size_t(y) * image.width + x];
      float color[3] = {255.0f, 255.0f * v, 0.0f};  // red for weak, yellow for strong responses
      float alpha = opacity * v;
      uint8_t* p = image.at(x, y);
      for (int c = 0; c < 3; ++c) p[c] = static_cast<uint8_t>(p[c] * (1 - alpha) + color[c] * alpha + 0.5f);
    }
  }
}

namespace {
void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), size);
}
}  // namespace

std::string encode_png(const Image& image) {
  std::string bytes;
  if (!stbi_write_png_to_func(append_bytes, &bytes, image.width, image.height, image.channels, image.pixels.data(),
                              image.width * image.channels)) {
    throw Error(ErrorKind::kInternal, "PNG encoding failed");
  }
  return bytes;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path folder = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  if (!fs::is_directory(folder)) throw not_found(path + ": folder " + folder.string() + " does not exist");
  std::random_device device;
  fs::path temporary = folder / ("." + target.filename().string() + "." + std::to_string(device()) + ".tmp");
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      fs::remove(temporary);
      throw Error(ErrorKind::kInternal, path + ": write failed (disk full or no permission?)");
    }
  }
  std::error_code error;
  fs::rename(temporary, target, error);
  if (error) {
    fs::remove(temporary);
    throw Error(ErrorKind::kInternal, path + ": cannot move the new file into place: " + error.message());
  }
}

void write_png(const std::string& path, const Image& image) { write_file_atomic(path, encode_png(image)); }

Image decode_png_rgba(const std::string& bytes, const std::string& source) {
  if (bytes.size() < 8 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) {
    throw invalid_input(source + ": not a PNG image");
  }
  int width = 0, height = 0, channels = 0;
  if (!stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &width,
                             &height, &channels)) {
    throw invalid_input(source + ": unreadable PNG header (" + stbi_failure_reason() + ")");
  }
  if (width <= 0 || height <= 0 || width > 4096 || height > 4096) {
    throw invalid_input(source + ": PNG of " + std::to_string(width) + "x" + std::to_string(height) +
                        " pixels is out of range (1 to 4096 per side)");
  }
  formats::DecodedPng decoded;
  std::string failure;
  if (!formats::decode_png_bounded(bytes, decoded, failure)) {
    if (failure == "outofmem") {
      throw invalid_input(source + ": the PNG's data decompresses to more than its " + std::to_string(width) + "x" +
                          std::to_string(height) + " pixels need (a corrupt or hostile image)");
    }
    throw invalid_input(source + ": corrupt PNG (" + failure + ")");
  }
  Image image(decoded.width, decoded.height, 4);
  std::copy(decoded.rgba.begin(), decoded.rgba.end(), image.pixels.begin());
  return image;
}

}  // namespace rankone

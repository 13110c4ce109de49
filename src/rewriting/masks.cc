#include "rankone/rewriting/masks.h"

#include "rankone/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace rankone {

std::string base64_decode(const std::string& text, const std::string& source) {
  auto value_of = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t buffer = 0;
  int bits = 0;
  bool padding = false;
  for (char c : text) {
    if (c == '=') {
      padding = true;
      continue;
    }
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    int value = value_of(c);
    if (value < 0 || padding) throw invalid_input(source + ": invalid base64 data (unexpected character)");
    buffer = (buffer << 6) | static_cast<uint32_t>(value);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> bits) & 0xff));
    }
  }
  return out;
}

std::string base64_encode(const std::string& bytes) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t n = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i + 1 == bytes.size()) {
    uint32_t n = uint8_t(bytes[i]) << 16;
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    uint32_t n = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

torch::Tensor decode_mask_url(const std::string& url, const std::string& source) {
  const std::string prefix = "data:image/png;base64,";
  if (url.compare(0, prefix.size(), prefix) != 0) {
    std::string start = url.substr(0, 30);
    throw invalid_input(source + ": mask must be a data URL starting with '" + prefix + "', got '" + start +
                        (url.size() > 30 ? "...'" : "'"));
  }
  Image image = decode_png_rgba(base64_decode(url.substr(prefix.size()), source), source);
  torch::Tensor mask = torch::empty({image.height, image.width}, torch::kUInt8);
  uint8_t* out = mask.data_ptr<uint8_t>();
  for (size_t i = 0; i < size_t(image.width) * image.height; ++i) out[i] = image.pixels[i * 4];
  return mask;
}

std::string encode_mask_url(const torch::Tensor& mask) {
  at::Tensor m = mask.scalar_type() == at::kByte ? mask : (mask.to(at::kFloat).clamp(0, 1) * 255).round().to(at::kByte);
  m = m.contiguous();
  Image image(static_cast<int>(m.size(1)), static_cast<int>(m.size(0)), 4);
  const uint8_t* values = m.data_ptr<uint8_t>();
  for (size_t i = 0; i < size_t(image.width) * image.height; ++i) {
    uint8_t v = values[i];
    image.pixels[i * 4 + 0] = image.pixels[i * 4 + 1] = image.pixels[i * 4 + 2] = v;
    image.pixels[i * 4 + 3] = v;
  }
  return "data:image/png;base64," + base64_encode(encode_png(image));
}

namespace {

// One antialiased bilinear pass of Pillow (ImagingResample, 8-bit, 22-bit fixed point)
// from n to m samples along one axis; `in` has `lines` rows of n samples with the given strides.
void resample_pass(const uint8_t* in, uint8_t* out, int64_t lines, int64_t n, int64_t m, int64_t in_line_stride,
                   int64_t in_step, int64_t out_line_stride, int64_t out_step) {
  constexpr int kPrecision = 22;
  double scale = static_cast<double>(n) / m;
  double filter_scale = std::max(scale, 1.0);
  double support = 1.0 * filter_scale;
  for (int64_t j = 0; j < m; ++j) {
    double center = (j + 0.5) * scale;
    int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), n);
    std::vector<double> weights(static_cast<size_t>(xmax - xmin));
    double total = 0.0;
    for (int64_t t = 0; t < xmax - xmin; ++t) {
      double w = 1.0 - std::fabs((t + xmin - center + 0.5) / filter_scale);
      weights[t] = w > 0 ? w : 0.0;
      total += weights[t];
    }
    std::vector<int64_t> fixed(weights.size());
    for (size_t t = 0; t < weights.size(); ++t) {
      double w = total != 0.0 ? weights[t] / total : 0.0;
      fixed[t] = w < 0 ? static_cast<int64_t>(-0.5 + w * (1 << kPrecision))
                       : static_cast<int64_t>(0.5 + w * (1 << kPrecision));
    }
    for (int64_t line = 0; line < lines; ++line) {
      int64_t sum = int64_t{1} << (kPrecision - 1);
      for (int64_t t = 0; t < xmax - xmin; ++t) sum += in[line * in_line_stride + (xmin + t) * in_step] * fixed[t];
      int64_t value = sum >> kPrecision;
      out[line * out_line_stride + j * out_step] = static_cast<uint8_t>(std::clamp<int64_t>(value, 0, 255));
    }
  }
}

}  // namespace

torch::Tensor resize_mask(const torch::Tensor& mask_u8, int64_t height, int64_t width) {
  at::Tensor source = mask_u8.to(at::kByte).contiguous();
  int64_t h = source.size(0), w = source.size(1);
  if (w != width) {
    at::Tensor horizontal = at::empty({h, width}, at::kByte);
    resample_pass(source.data_ptr<uint8_t>(), horizontal.data_ptr<uint8_t>(), h, w, width, w, 1, width, 1);
    source = horizontal;
  }
  if (h != height) {
    at::Tensor vertical = at::empty({height, width}, at::kByte);
    resample_pass(source.data_ptr<uint8_t>(), vertical.data_ptr<uint8_t>(), width, h, height, 1, width, 1, width);
    source = vertical;
  }
  return source.to(at::kFloat) / 255.0;
}

Box mask_bounds(const torch::Tensor& mask) {
  at::Tensor set = mask > 0;
  at::Tensor rows = set.any(1).nonzero();
  at::Tensor cols = set.any(0).nonzero();
  Box box;
  if (rows.numel() == 0) return box;
  box.top = rows.min().item<int64_t>();
  box.bottom = rows.max().item<int64_t>() + 1;
  box.left = cols.min().item<int64_t>();
  box.right = cols.max().item<int64_t>() + 1;
  return box;
}

}  // namespace rankone

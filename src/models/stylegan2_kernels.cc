#include "models/stylegan2_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace rankone::stylegan2::kernels {

namespace {

constexpr float kSqrt2 = 1.41421356237309515f;
constexpr float kLeakySlope = 0.2f;
// One axis of the separable [1,3,3,1] kernel with gain 2, so the 2-D kernel has gain 4.
constexpr float kTap0 = 0.25f, kTap1 = 0.75f;

// Finishes `count` values of one plane. The flags are template parameters, so each
// variant compiles to a branch-free, vectorisable loop.
template <bool kNoise, bool kOut, bool kKey>
void finish_span(const float* conv, int64_t count, float demod, const float* noise, float strength, float bias,
                 float* out, float style, float* key) {
  for (int64_t i = 0; i < count; ++i) {
    float v = conv[i] * demod;
    if (kNoise) v += strength * noise[i];
    v += bias;
    // A select between two constants vectorises, unlike a conditional multiply.
    v *= v > 0.f ? kSqrt2 : kLeakySlope * kSqrt2;
    if (kOut) out[i] = v;
    if (kKey) key[i] = v * style;
  }
}

using SpanFunction = void (*)(const float*, int64_t, float, const float*, float, float, float*, float, float*);

SpanFunction pick_span(bool noise, bool out, bool key) {
  static const SpanFunction table[8] = {
      finish_span<false, false, false>, finish_span<false, false, true>, finish_span<false, true, false>,
      finish_span<false, true, true>,   finish_span<true, false, false>, finish_span<true, false, true>,
      finish_span<true, true, false>,   finish_span<true, true, true>,
  };
  return table[(noise ? 4 : 0) + (out ? 2 : 0) + (key ? 1 : 0)];
}

// Finishes `count` values of plane `plane` (b * C + c) that start `offset` values into the
// plane. `conv_rows` points at the first of those values.
void finish_rows(const Epilogue& e, SpanFunction span, const float* conv_rows, int64_t plane, int64_t channels,
                 int64_t plane_size, int64_t offset, int64_t count) {
  int64_t b = plane / channels, c = plane % channels;
  const float* noise = e.noise ? e.noise + b * plane_size + offset : nullptr;
  float* out = e.out ? e.out + plane * plane_size + offset : nullptr;
  float* key = e.next_key ? e.next_key + plane * plane_size + offset : nullptr;
  float style = e.next_style ? e.next_style[plane] : 0.f;
  span(conv_rows, count, e.demod[plane], noise, e.strength, e.bias[c], out, style, key);
}

}  // namespace

void finish_plain(const float* conv, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  const Epilogue& e) {
  SpanFunction span = pick_span(e.noise != nullptr, e.out != nullptr, e.next_key != nullptr);
  int64_t plane_size = height * width;
  at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      finish_rows(e, span, conv + plane * plane_size, plane, channels, plane_size, 0, plane_size);
    }
  });
}

void finish_blurred(const float* conv, int64_t batch, int64_t channels, int64_t height, int64_t width,
                    const Epilogue& e) {
  SpanFunction span = pick_span(e.noise != nullptr, e.out != nullptr, e.next_key != nullptr);
  int64_t in_height = height + 1, in_width = width + 1;
  at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
    // Horizontal pass into `rows` (in_height x width), vertical pass one output row at a time.
    std::vector<float> rows(in_height * width), sum(width);
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* input = conv + plane * in_height * in_width;
      for (int64_t y = 0; y < in_height; ++y) {
        const float* in = input + y * in_width;
        float* h = rows.data() + y * width;
        // h[x] = k0 in[x-1] + k1 in[x] + k1 in[x+1] + k0 in[x+2], zero outside [0, in_width).
        h[0] = kTap1 * in[0] + kTap1 * in[1] + kTap0 * in[2];
        for (int64_t x = 1; x < width - 1; ++x) {
          h[x] = kTap0 * in[x - 1] + kTap1 * in[x] + kTap1 * in[x + 1] + kTap0 * in[x + 2];
        }
        h[width - 1] = kTap0 * in[width - 2] + kTap1 * in[width - 1] + kTap1 * in[width];
      }
      for (int64_t y = 0; y < height; ++y) {
        const float* mid0 = rows.data() + y * width;
        const float* mid1 = mid0 + width;
        for (int64_t x = 0; x < width; ++x) sum[x] = kTap1 * mid0[x] + kTap1 * mid1[x];
        if (y > 0) {
          const float* above = mid0 - width;
          for (int64_t x = 0; x < width; ++x) sum[x] += kTap0 * above[x];
        }
        if (y + 2 < in_height) {
          const float* below = mid1 + width;
          for (int64_t x = 0; x < width; ++x) sum[x] += kTap0 * below[x];
        }
        finish_rows(e, span, sum.data(), plane, channels, height * width, y * width, width);
      }
    }
  });
}

void to_rgb(const float* x, int64_t batch, int64_t channels, int64_t pixels, const float* weight, const float* bias,
            const float* skip, float* out) {
  // Blocks of pixels small enough that the 3 accumulator rows stay in the L1 cache.
  constexpr int64_t kBlock = 1024;
  int64_t blocks = (pixels + kBlock - 1) / kBlock;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    float sum[3][kBlock];
    for (int64_t task = begin; task < end; ++task) {
      int64_t b = task / blocks;
      int64_t first = (task % blocks) * kBlock;
      int64_t count = std::min(kBlock, pixels - first);
      const float* w = weight + b * 3 * channels;

      for (int k = 0; k < 3; ++k) {
        for (int64_t i = 0; i < count; ++i) sum[k][i] = 0.f;
      }
      for (int64_t c = 0; c < channels; ++c) {
        const float* in = x + (b * channels + c) * pixels + first;
        float w0 = w[c], w1 = w[channels + c], w2 = w[2 * channels + c];
        for (int64_t i = 0; i < count; ++i) {
          sum[0][i] += w0 * in[i];
          sum[1][i] += w1 * in[i];
          sum[2][i] += w2 * in[i];
        }
      }
      for (int k = 0; k < 3; ++k) {
        float* o = out + (b * 3 + k) * pixels + first;
        const float* s = skip ? skip + (b * 3 + k) * pixels + first : nullptr;
        for (int64_t i = 0; i < count; ++i) o[i] = sum[k][i] + bias[k] + (s ? s[i] : 0.f);
      }
    }
  });
}

void upsample_planes(const float* input, int64_t planes, int64_t size, float* out) {
  int64_t out_size = 2 * size;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(size * out_size);
    for (int64_t plane = begin; plane < end; ++plane) {
      // out[2m] = k0 in[m-1] + k1 in[m], out[2m+1] = k1 in[m] + k0 in[m+1], along each axis.
      const float* in_plane = input + plane * size * size;
      for (int64_t y = 0; y < size; ++y) {
        const float* in = in_plane + y * size;
        float* h = rows.data() + y * out_size;
        for (int64_t m = 0; m < size; ++m) {
          float left = m > 0 ? in[m - 1] : 0.f;
          float right = m + 1 < size ? in[m + 1] : 0.f;
          h[2 * m] = kTap0 * left + kTap1 * in[m];
          h[2 * m + 1] = kTap1 * in[m] + kTap0 * right;
        }
      }
      float* out_plane = out + plane * out_size * out_size;
      for (int64_t m = 0; m < size; ++m) {
        const float* center = rows.data() + m * out_size;
        const float* above = m > 0 ? center - out_size : nullptr;
        const float* below = m + 1 < size ? center + out_size : nullptr;
        float* even = out_plane + 2 * m * out_size;
        float* odd = even + out_size;
        for (int64_t x = 0; x < out_size; ++x) {
          even[x] = kTap1 * center[x] + (above ? kTap0 * above[x] : 0.f);
          odd[x] = kTap1 * center[x] + (below ? kTap0 * below[x] : 0.f);
        }
      }
    }
  });
}

}  // namespace rankone::stylegan2::kernels

// Fused CPU loops for the memory-bound steps of StyleGAN2: the FIR filters and the
// per-pixel work after each convolution. All pointers are to contiguous float32 data.
#pragma once

#include <cstdint>

namespace rankone::stylegan2::kernels {

/// The per-pixel steps after a convolution, for planes [B, C, H, W]:
/// v = lrelu(conv * demod[b, c] + strength * noise[b] + bias[c], 0.2) * sqrt(2), written to
/// `out` and, as v * next_style[b, c], to `next_key` (each skipped when null).
struct Epilogue {
  const float* demod = nullptr;       // [B, C]
  const float* noise = nullptr;       // [B, H, W], or null for no noise
  float strength = 0.f;
  const float* bias = nullptr;        // [C]
  float* out = nullptr;               // [B, C, H, W], or null
  const float* next_style = nullptr;  // [B, C], or null
  float* next_key = nullptr;          // [B, C, H, W], or null
};

/// Applies `epilogue` to `conv` [B, C, H, W].
void finish_plain(const float* conv, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  const Epilogue& epilogue);

/// Blurs `conv` [B, C, H + 1, W + 1] with the [1,3,3,1] FIR filter (gain 4, padding 1 on
/// each side) to [B, C, H, W], then applies `epilogue`.
void finish_blurred(const float* conv, int64_t batch, int64_t channels, int64_t height, int64_t width,
                    const Epilogue& epilogue);

/// The toRGB branch for `batch` maps of `channels` x `pixels`: out[b, k, p] =
/// sum_c weight[b, k, c] * x[b, c, p] + bias[k] + skip[b, k, p] for the 3 colours k, with
/// `weight` [B, 3, C] already modulated and `skip` [B, 3, P] (or null).
void to_rgb(const float* x, int64_t batch, int64_t channels, int64_t pixels, const float* weight, const float* bias,
            const float* skip, float* out);

/// Upsamples `planes` square maps of side `size` by 2 with the [1,3,3,1] FIR filter (zero
/// insertion, gain 4, padding (2, 1)) into `out` [planes, 2 size, 2 size].
void upsample_planes(const float* input, int64_t planes, int64_t size, float* out);

}  // namespace rankone::stylegan2::kernels

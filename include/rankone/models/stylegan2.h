// StyleGAN2 generators ("Analyzing and Improving the Image Quality of StyleGAN",
// Karras et al., CVPR 2020) in the tensor layout of rosinality/stylegan2-pytorch,
// cut into context, target and render at any styled convolution.
//
//   rankone::TensorFile file = rankone::load_tensor_file("church.pt");
//   if (rankone::is_stylegan2(file)) {
//     auto g = rankone::load_stylegan2(file);   // g->layers(): layer2 ... layer(2 log2(S) - 2)
//     rankone::SamplingSettings settings;        // "sample" noise, truncation 1
//     torch::Tensor images = g->generate(g->latents({0, 1}, settings), settings);
//   }
//
// Layers are numbered as the reference rewriting tool numbers them: layer 2 is the
// 4x4 convolution `conv1`, layer N >= 3 is `convs.(N-3)`, and odd layers from 3 up
// double the resolution. The key of a layer is its input multiplied by the style
// (C_in x R_in x R_in), the value is its output after noise, bias and activation.
//
// Noise modes (SamplingSettings::noise), with R the value resolution of layer N:
// - "sample": sample i at layer N gets
//   numpy.random.RandomState((64 * i + N) % 2**32).randn(R * R).astype(float32)
//   viewed as [R, R]. The noise depends only on (i, N), not on the batch, and differs
//   between samples for all i < 2**26. Rows without a sample index (index -1) get zero noise.
// - "stored": the checkpoint's `noises.noise_(N-2)` buffers, the same for every sample.
// - "reference": the reference tool's stream. Every layer draws
//   RandomState(0).randn(B * R * R).astype(float32) afresh, so row b of a batch of B gets
//   values [b R^2, (b+1) R^2): the noise depends on the batch size and is identical for
//   layers of the same resolution.
// - "zero": no noise.
#pragma once

#include "rankone/formats/tensor_file.h"
#include "rankone/models/generator.h"

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace rankone {

/// Whether `file` holds a StyleGAN2 generator: either the released layout
/// (`g_ema.<rosinality name>` tensors, optionally `latent_avg`) or a bare g_ema state dict.
bool is_stylegan2(const TensorFile& file);

/// Builds a StyleGAN2 generator from `file`. Resolution, channels, style size and the number
/// of mapping layers come from the tensor shapes. Tensors outside `g_ema.` in the released
/// layout (the discriminator and optimiser state of a training checkpoint) are ignored.
/// Throws an invalid-input Error naming missing, unknown or misshapen tensors.
std::unique_ptr<Generator> load_stylegan2(const TensorFile& file);

/// The shape of a StyleGAN2 network, for models built with random weights.
struct StyleGAN2Config {
  int64_t resolution = 64;                // image side, a power of two >= 8
  int64_t style_size = 64;                // size of z and w
  int64_t mapping_layers = 8;
  std::map<int64_t, int64_t> channels;    // resolution -> feature channels, 4 ... resolution
  bool released_layout = true;            // `g_ema.` prefix and a `latent_avg` tensor
  bool noise_buffers = true;              // include `noises.noise_*`
};

/// Channel table of the official config-f networks (channel multiplier 2) up to `resolution`:
/// 512 channels up to 32x32, then 512, 256, 128, 64, 32 at 64 ... 1024.
std::map<int64_t, int64_t> config_f_channels(int64_t resolution);

/// A checkpoint of `config` with random weights drawn from a generator seeded with `seed`,
/// in the tensor names and order of rosinality's state dict. Weights are N(0, 1), as the
/// official initialisation draws them. Biases, noise strengths and `latent_avg` are small
/// random values, so every path of the network is exercised.
TensorFile make_random_stylegan2(const StyleGAN2Config& config, uint64_t seed);

/// A StyleGAN2 generator. Besides the Generator interface it exposes the mapping, the
/// truncation and a synthesis pass with caller-given noise, for tests and tools.
/// NOTE: const methods may run concurrently, but set_weight must not run alongside them.
class StyleGAN2 : public Generator {
 public:
  /// Noise maps by layer number: [B, 1, R, R] float32 at the layer's value resolution.
  using NoiseMaps = std::map<int, torch::Tensor>;
  /// Named intermediate tensors of one synthesis pass (see synthesize()).
  using Trace = std::map<std::string, torch::Tensor>;

  /// Builds the generator from a checkpoint; see load_stylegan2().
  explicit StyleGAN2(const TensorFile& file);
  ~StyleGAN2() override;

  std::string architecture() const override { return "stylegan2"; }
  std::string describe() const override;
  int64_t latent_size() const override { return style_size_; }
  int64_t image_size() const override { return resolution_; }
  int64_t parameter_count() const override { return parameter_count_; }
  const std::vector<LayerInfo>& layers() const override { return layer_infos_; }
  /// Layer 6 (the second 16x16 convolution), or the last layer of networks below 16x16.
  int default_layer() const override;

  /// make_latents() with the standard normal distribution and `style_size` values per row.
  SampleBatch latents(const std::vector<int64_t>& indices, const SamplingSettings& settings) const override;
  torch::Tensor generate(const SampleBatch& batch, const SamplingSettings& settings) const override;

  /// The state's extras are "w" [B, style] after truncation, "style" [B, C_in], "noise"
  /// [B, 1, R, R] (this layer's noise at value resolution) and "noise.layerN" for every later
  /// layer N. From layer 3 on they also include "rgb" [B, 3, R, R], the running image
  /// upsampled to the value resolution.
  LayerState run_context(int layer, const SampleBatch& batch, const SamplingSettings& settings) const override;
  /// The key alone: draws no noise for later layers and skips the toRGB branch.
  torch::Tensor run_context_key(int layer, const SampleBatch& batch, const SamplingSettings& settings) const override;
  /// Modulated convolution with `weight` [C_out, C_in, 3, 3], demodulation computed from
  /// `weight` and the state's style, FIR blur on upsampling layers, noise, bias and
  /// LeakyReLU(0.2) * sqrt(2). Differentiable in `weight`.
  torch::Tensor run_target(int layer, const LayerState& state, const torch::Tensor& weight) const override;
  /// Demodulated form of the layer for one sample (batch 1); nullopt for larger batches.
  std::optional<LayerExpansion> expand_target(int layer, const LayerState& state,
                                              const torch::Tensor& d) const override;
  torch::Tensor run_render(int layer, const LayerState& state, const torch::Tensor& value) const override;
  /// Crops key, "noise" and "rgb", the last two in value pixels (key_box times the stride).
  /// In "reference" noise mode the crop gets fresh noise for its own size, as the reference
  /// tool's target model draws it. In other modes it keeps the crop of the sample's noise.
  /// The later layers' noise is dropped, so the cropped state serves run_target only.
  LayerState crop(int layer, const LayerState& state, const Box& key_box,
                  const SamplingSettings& settings) const override;

  torch::Tensor weight(int layer) const override;
  void set_weight(int layer, const torch::Tensor& canonical) override;
  torch::Tensor to_checkpoint_layout(int layer, const torch::Tensor& canonical) const override;
  /// sha256 over a manifest of every tensor as loaded: one line per tensor with its name
  /// (without the `g_ema.` prefix), shape and the sha256 of its float32 bytes, in name order.
  std::string fingerprint() const override { return fingerprint_; }
  std::string source() const override { return source_; }

  /// Mapping network: pixel norm, then equalised-lr linear layers (lr multiplier 0.01)
  /// with LeakyReLU(0.2) * sqrt(2). Maps z [B, style] to w [B, style].
  torch::Tensor map_latents(const torch::Tensor& z) const;
  /// latent_avg + truncation * (w - latent_avg); returns `w` itself when truncation is 1.
  torch::Tensor truncate(const torch::Tensor& w, double truncation) const;
  /// The mean w that truncation pulls toward: the file's `latent_avg`, or, when the file has
  /// none, the mean mapping output of RandomState(0).standard_normal((4096, style)) as float32.
  const torch::Tensor& latent_avg() const { return latent_avg_; }
  /// Noise of every layer for `batch` under `mode` ("sample", "stored", "reference", "zero").
  NoiseMaps make_noise(const SampleBatch& batch, const std::string& mode) const;
  /// make_noise() for layers 2 ... `last_layer` only; their maps equal make_noise()'s.
  NoiseMaps make_noise_until(const SampleBatch& batch, const std::string& mode, int last_layer) const;
  /// Synthesis from w [B, style] (already truncated) with the given noise for every layer.
  /// When `trace` is given, records "layerN.in_fmap", ".rgb_skip_in", ".style", ".key",
  /// ".dconv_out" (after demodulation and, on upsampling layers, the blur), ".noise_out",
  /// ".out" and "to_rgbK.rgb" (K = N / 2 for even N, 1 after layer 2); returns [B, 3, S, S].
  torch::Tensor synthesize(const torch::Tensor& w, const NoiseMaps& noise, Trace* trace = nullptr) const;

  struct EqualLinear;
  struct StyledConv;
  struct ToRGB;

 private:
  const StyledConv& conv_at(int layer) const;
  StyledConv& conv_at(int layer);
  torch::Tensor style_of(const StyledConv& conv, const torch::Tensor& w) const;
  torch::Tensor map_and_truncate(const SampleBatch& batch, const SamplingSettings& settings) const;
  // The feature map between two layers, the next layer's key when already computed, and
  // the running image (kept only while `with_rgb`).
  struct Cursor {
    torch::Tensor x, key, rgb;
    bool with_rgb = true;
  };
  // One network step at layer N: upsample the running image before odd layers, run the
  // layer, then the toRGB that follows even layers (and layer 2). With `prepare_next_key`
  // the step also leaves the key of layer N + 1 in the cursor.
  void run_step(int layer, const torch::Tensor& w, const torch::Tensor& layer_noise, Cursor& cursor,
                bool prepare_next_key, Trace* trace) const;
  torch::Tensor apply_to_rgb(int layer, const torch::Tensor& w, const torch::Tensor& x, const torch::Tensor& skip,
                             Trace* trace) const;
  void load(const TensorFile& file);

  std::string source_;
  std::string fingerprint_;
  std::string latent_avg_origin_;
  int64_t resolution_ = 0;
  int64_t style_size_ = 0;
  int64_t parameter_count_ = 0;
  bool has_stored_noise_ = false;
  std::vector<EqualLinear> mapping_;
  torch::Tensor latent_avg_;      // [style]
  torch::Tensor constant_input_;  // [1, C_4, 4, 4]
  std::vector<std::unique_ptr<StyledConv>> convs_;  // layers 2, 3, ... in order
  std::vector<std::unique_ptr<ToRGB>> to_rgbs_;     // after layer 2, 4, 6, ...
  std::vector<LayerInfo> layer_infos_;
};

}  // namespace rankone

// The generator interface the rewriting engine sees: a network that can be cut
// at one convolution layer L into context (up to L's input), target (L alone)
// and render (L's output to the image), as in "Rewriting a Deep Generative
// Model" (Bau et al., ECCV 2020).
//
//   auto g = rankone::load_generator("dcgan-celeba32");
//   rankone::SamplingSettings settings;
//   rankone::SampleBatch batch = g->latents({0, 1, 2}, settings);
//   torch::Tensor images = g->generate(batch, settings);          // [3, 3, 32, 32] in [-1, 1]
//   rankone::LayerState s = g->run_context(2, batch, settings);    // s.key: [3, 128, 4, 4]
//   torch::Tensor v = g->run_target(2, s, g->weight(2));           // [3, 64, 8, 8]
//   torch::Tensor same = g->run_render(2, s, v);                   // equals `images`
#pragma once

#include "rankone/models/layer_expansion.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace rankone {

/// Sampling settings that define "sample i": the latent stream, the noise and the truncation.
/// Saved with every request, patch and statistics cache.
struct SamplingSettings {
  /// "rankone": latent i is the start of numpy-compatible RandomState(i)'s stream
  /// (standard_normal, or uniform in [-1, 1) for models trained on uniform latents).
  /// "reference": latent i is row i of RandomState(1).standard_normal(N * latent_size),
  /// the numbering of the reference rewriting tool.
  std::string latents = "rankone";
  /// StyleGAN2 only. "sample": noise fixed per sample index and layer (batch independent);
  /// "stored": the checkpoint's noise buffers; "reference": the reference tool's
  /// batch-dependent stream (see models/stylegan2.h); "zero": no noise.
  std::string noise = "sample";
  /// StyleGAN2 only: w = w_avg + truncation * (w - w_avg); 1 disables it.
  double truncation = 1.0;

  nlohmann::json to_json() const;
  /// Reads the fields present in `j` over the defaults; throws an invalid-input Error on bad values.
  static SamplingSettings from_json(const nlohmann::json& j);
  /// Checks the values; throws an invalid-input Error naming the bad one.
  void validate() const;
};

/// Latents with the sample index of each row (-1 where the latent came from a file).
struct SampleBatch {
  torch::Tensor z;  // [B, latent_size] float32
  std::vector<int64_t> indices;
};

/// An axis-aligned box [top, bottom) x [left, right) in feature-map pixels.
struct Box {
  int64_t top = 0, left = 0, bottom = 0, right = 0;
  int64_t height() const { return bottom - top; }
  int64_t width() const { return right - left; }
  bool empty() const { return bottom <= top || right <= left; }
};

/// One rewritable convolution layer.
struct LayerInfo {
  int index = 0;            // user-facing number (StyleGAN2: 2 is the 4x4 convolution)
  std::string name;         // e.g. "block2", "layer6"
  std::string weight_name;  // name of the edited tensor in the checkpoint
  int64_t key_channels = 0, key_size = 0;      // key map: C_in x key_size x key_size
  int64_t value_channels = 0, value_size = 0;  // value map: C_out x value_size x value_size
  int64_t kernel_size = 0;
  bool demodulated = false;  // StyleGAN2: output is normalised by the modulated weight's norm
  /// Value pixels per key pixel along each axis (value_size / key_size), 1 or 2 here.
  int64_t stride() const { return key_size > 0 ? value_size / key_size : 1; }
};

/// The tensors carried across the cut at one layer.
struct LayerState {
  torch::Tensor key;  // [B, C_in, H, W]: the layer input (StyleGAN2: modulated by the style)
  /// Architecture-specific tensors that target and render need (StyleGAN2: "style",
  /// "noise", "rgb", "w"). Spatial ones are cropped by Generator::crop.
  std::map<std::string, torch::Tensor> extras;
  std::vector<int64_t> indices;  // sample index of each row
};

class Generator {
 public:
  virtual ~Generator() = default;

  /// "sequential" or "stylegan2".
  virtual std::string architecture() const = 0;
  /// Multi-line human-readable summary: resolution, layers with key and value shapes, parameters.
  virtual std::string describe() const = 0;
  virtual int64_t latent_size() const = 0;
  /// Output image side in pixels (images are square, 3 channels, roughly in [-1, 1]).
  virtual int64_t image_size() const = 0;
  virtual int64_t parameter_count() const = 0;

  /// Rewritable layers, in network order.
  virtual const std::vector<LayerInfo>& layers() const = 0;
  /// Layer `index`; throws an invalid-input Error listing the valid numbers.
  const LayerInfo& layer(int index) const;
  virtual int default_layer() const = 0;

  /// Latents of the given sample indices under `settings` (deterministic per index).
  virtual SampleBatch latents(const std::vector<int64_t>& indices, const SamplingSettings& settings) const = 0;

  /// Full forward pass: [B, 3, S, S] float32.
  virtual torch::Tensor generate(const SampleBatch& batch, const SamplingSettings& settings) const = 0;

  /// Runs the network up to the input of `layer`.
  virtual LayerState run_context(int layer, const SampleBatch& batch, const SamplingSettings& settings) const = 0;
  /// The key of run_context() alone, [B, C_in, H, W]. Architectures may skip work that only
  /// later layers need, so statistics use this.
  virtual torch::Tensor run_context_key(int layer, const SampleBatch& batch, const SamplingSettings& settings) const;
  /// Runs `layer` alone on `state` with `weight` in canonical layout [C_out, C_in, k, k];
  /// differentiable in `weight`. Returns the value map [B, C_out, H', W'].
  virtual torch::Tensor run_target(int layer, const LayerState& state, const torch::Tensor& weight) const = 0;
  /// Runs the rest of the network from `layer`'s value map to the image.
  virtual torch::Tensor run_render(int layer, const LayerState& state, const torch::Tensor& value) const = 0;
  /// Crops `state` to `key_box` (key-map pixels) so that run_target gives the value crop
  /// of the matching box scaled by the stride.
  virtual LayerState crop(int layer, const LayerState& state, const Box& key_box,
                          const SamplingSettings& settings) const = 0;

  /// `layer`'s output on `state` as an explicit function of Lambda for the weight
  /// weight(layer) + einsum(Lambda, d), with d [r, C_in] (see layer_expansion.h). Returns
  /// nullopt where the layer has no such form, for example a norm that mixes output channels;
  /// solvers then differentiate run_target instead.
  virtual std::optional<LayerExpansion> expand_target(int layer, const LayerState& state,
                                                      const torch::Tensor& d) const;

  /// The weight of `layer` in canonical layout [C_out, C_in, k, k] (a copy).
  virtual torch::Tensor weight(int layer) const = 0;
  /// Replaces the weight of `layer` (canonical layout, same shape).
  virtual void set_weight(int layer, const torch::Tensor& canonical) = 0;
  /// Converts a canonical weight of `layer` to the layout of the checkpoint tensor
  /// LayerInfo::weight_name (e.g. [C_in, C_out, k, k] for a transposed convolution).
  virtual torch::Tensor to_checkpoint_layout(int layer, const torch::Tensor& canonical) const = 0;

  /// sha256 (hex) over every parameter as loaded, independent of later set_weight calls;
  /// keys statistics caches.
  virtual std::string fingerprint() const = 0;
  /// Path of the model card or checkpoint the model was loaded from, for messages and metadata.
  virtual std::string source() const = 0;
};

/// Loads a generator from a model card (.json), a StyleGAN2 checkpoint (.pt, .pth,
/// .safetensors) or the name of a bundled model card (e.g. "dcgan-celeba32").
/// Throws rankone::Error naming the file and what is wrong.
std::unique_ptr<Generator> load_generator(const std::string& model);

/// sha256 hex digest of bytes.
std::string sha256_hex(const void* data, size_t size);
/// sha256 hex digest of a contiguous CPU tensor's bytes.
std::string sha256_hex(const torch::Tensor& tensor);

}  // namespace rankone

// StyleGAN2 forward passes: the full synthesis and the split at one layer into
// context, target and render.
#include "rankone/models/stylegan2.h"

#include "models/stylegan2_noise.h"
#include "models/stylegan2_parts.h"
#include "rankone/error.h"
#include "rankone/models/latents.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <iomanip>
#include <sstream>

namespace rankone {

namespace {

using stylegan2::upsample_fir;

std::string shape_text(const torch::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

const torch::Tensor& extra(const LayerState& state, const std::string& name, int layer) {
  auto found = state.extras.find(name);
  if (found == state.extras.end() || !found->second.defined()) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the layer state has no '" + name +
                        "' tensor; build the state with run_context (a cropped state serves run_target only)");
  }
  return found->second;
}

torch::Tensor crop_map(const torch::Tensor& map, int64_t top, int64_t left, int64_t bottom, int64_t right) {
  return map.slice(2, top, bottom).slice(3, left, right).contiguous();
}

}  // namespace

StyleGAN2::StyleGAN2(const TensorFile& file) { load(file); }

StyleGAN2::~StyleGAN2() = default;

const StyleGAN2::StyledConv& StyleGAN2::conv_at(int layer) const {
  int last = 1 + static_cast<int>(convs_.size());
  if (layer < 2 || layer > last) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + " does not exist: this " +
                        std::to_string(resolution_) + "x" + std::to_string(resolution_) + " generator has layers 2 to " +
                        std::to_string(last));
  }
  return *convs_[layer - 2];
}

StyleGAN2::StyledConv& StyleGAN2::conv_at(int layer) {
  return const_cast<StyledConv&>(static_cast<const StyleGAN2*>(this)->conv_at(layer));
}

int StyleGAN2::default_layer() const { return std::min(6, 1 + static_cast<int>(convs_.size())); }

SampleBatch StyleGAN2::latents(const std::vector<int64_t>& indices, const SamplingSettings& settings) const {
  return make_latents(indices, style_size_, LatentDistribution::kNormal, settings);
}

torch::Tensor StyleGAN2::map_latents(const torch::Tensor& z) const {
  if (z.dim() != 2 || z.size(1) != style_size_) {
    throw invalid_input("StyleGAN2 latents must have shape [B, " + std::to_string(style_size_) + "], got " +
                        shape_text(z));
  }
  torch::Tensor x = z.to(at::kFloat);

  // Pixel norm, then the equalised-lr MLP with the fused LeakyReLU(0.2) * sqrt(2).
  x = x * at::rsqrt(x.square().mean(1, /*keepdim=*/true) + 1e-8);
  for (const EqualLinear& linear : mapping_) {
    x = at::leaky_relu(linear.apply(x), 0.2) * std::sqrt(2.0);
  }
  return x;
}

torch::Tensor StyleGAN2::truncate(const torch::Tensor& w, double truncation) const {
  if (truncation == 1.0) return w;
  return latent_avg_ + truncation * (w - latent_avg_);
}

torch::Tensor StyleGAN2::map_and_truncate(const SampleBatch& batch, const SamplingSettings& settings) const {
  if (!batch.z.defined()) throw invalid_input("the sample batch has no latents");
  return truncate(map_latents(batch.z), settings.truncation);
}

torch::Tensor StyleGAN2::style_of(const StyledConv& conv, const torch::Tensor& w) const {
  return conv.modulation.apply(w);
}

torch::Tensor StyleGAN2::apply_to_rgb(int layer, const torch::Tensor& w, const torch::Tensor& x,
                                      const torch::Tensor& skip, Trace* trace) const {
  const ToRGB& to_rgb = *to_rgbs_[layer / 2 - 1];

  // Modulating the small [3, C] weight per sample is cheaper than modulating the input.
  torch::Tensor style = to_rgb.modulation.apply(w);
  torch::Tensor modulated = to_rgb.weight.unsqueeze(0) * style.unsqueeze(1);
  torch::Tensor rgb = stylegan2::to_rgb(x, modulated, to_rgb.bias, skip);

  if (trace) (*trace)["to_rgb" + std::to_string(layer / 2) + ".rgb"] = rgb;
  return rgb;
}

void StyleGAN2::run_step(int layer, const torch::Tensor& w, const torch::Tensor& layer_noise, Cursor& cursor,
                         bool prepare_next_key, Trace* trace) const {
  const StyledConv& conv = conv_at(layer);
  if (conv.upsample && cursor.with_rgb) cursor.rgb = upsample_fir(cursor.rgb);

  torch::Tensor style = style_of(conv, w);
  torch::Tensor key = cursor.key.defined() ? cursor.key : cursor.x * style.view({style.size(0), style.size(1), 1, 1});
  torch::Tensor convolved = stylegan2::convolve(key, conv.conv_weight, conv.upsample);
  torch::Tensor demod = stylegan2::demodulation(style, conv.demod_weight);

  if (trace) {
    // Step by step with ATen ops, recording what the reference records.
    std::string prefix = "layer" + std::to_string(layer) + ".";
    (*trace)[prefix + "in_fmap"] = cursor.x;
    if (cursor.rgb.defined()) (*trace)[prefix + "rgb_skip_in"] = cursor.rgb;
    (*trace)[prefix + "style"] = style;
    (*trace)[prefix + "key"] = key;
    torch::Tensor y = convolved * demod.view({demod.size(0), demod.size(1), 1, 1});
    if (conv.upsample) y = stylegan2::blur_fir(y);
    (*trace)[prefix + "dconv_out"] = y;
    if (layer_noise.defined()) y = y + layer_noise * conv.noise_strength;
    (*trace)[prefix + "noise_out"] = y;
    cursor.x = at::leaky_relu(y + conv.activation_bias.view({1, -1, 1, 1}), 0.2) * std::sqrt(2.0);
    cursor.key = torch::Tensor();
    (*trace)[prefix + "out"] = cursor.x;
  } else {
    bool has_next = layer < 1 + static_cast<int>(convs_.size());
    torch::Tensor next_style = prepare_next_key && has_next ? style_of(conv_at(layer + 1), w) : torch::Tensor();
    // Even layers feed a toRGB, so their output is kept; odd layers feed only the next key.
    bool keep_output = layer % 2 == 0 || !next_style.defined();
    stylegan2::LayerOutput output = stylegan2::finish_layer(convolved, demod, conv.upsample, layer_noise,
                                                            conv.noise_strength, conv.activation_bias, next_style,
                                                            keep_output);
    cursor.x = output.out;
    cursor.key = output.next_key;
  }

  if (layer % 2 == 0 && cursor.with_rgb) cursor.rgb = apply_to_rgb(layer, w, cursor.x, cursor.rgb, trace);
}

torch::Tensor StyleGAN2::synthesize(const torch::Tensor& w, const NoiseMaps& noise, Trace* trace) const {
  at::NoGradGuard no_grad;
  if (w.dim() != 2 || w.size(1) != style_size_) {
    throw invalid_input("StyleGAN2 w must have shape [B, " + std::to_string(style_size_) + "], got " + shape_text(w));
  }
  int64_t batch = w.size(0);

  Cursor cursor;
  cursor.x = constant_input_.expand({batch, -1, -1, -1});
  for (const auto& conv : convs_) {
    auto found = noise.find(conv->layer);
    if (found == noise.end()) {
      throw invalid_input("no noise given for StyleGAN2 layer " + std::to_string(conv->layer));
    }
    const torch::Tensor& layer_noise = found->second;
    bool valid = !layer_noise.defined() ||
                 (layer_noise.dim() == 4 && (layer_noise.size(0) == batch || layer_noise.size(0) == 1) &&
                  layer_noise.size(1) == 1 && layer_noise.size(2) == conv->value_size &&
                  layer_noise.size(3) == conv->value_size);
    if (!valid) {
      throw invalid_input("the noise of StyleGAN2 layer " + std::to_string(conv->layer) + " has shape " +
                          shape_text(layer_noise) + ", expected [" + std::to_string(batch) + ", 1, " +
                          std::to_string(conv->value_size) + ", " + std::to_string(conv->value_size) + "]");
    }
    run_step(conv->layer, w, layer_noise, cursor, /*prepare_next_key=*/trace == nullptr, trace);
  }
  return cursor.rgb;
}

torch::Tensor StyleGAN2::generate(const SampleBatch& batch, const SamplingSettings& settings) const {
  at::NoGradGuard no_grad;
  settings.validate();
  torch::Tensor w = map_and_truncate(batch, settings);
  return synthesize(w, make_noise(batch, settings.noise));
}

LayerState StyleGAN2::run_context(int layer, const SampleBatch& batch, const SamplingSettings& settings) const {
  at::NoGradGuard no_grad;
  const StyledConv& target = conv_at(layer);
  settings.validate();
  torch::Tensor w = map_and_truncate(batch, settings);
  NoiseMaps noise = make_noise(batch, settings.noise);
  int64_t rows = w.size(0);

  Cursor cursor;
  cursor.x = constant_input_.expand({rows, -1, -1, -1});
  for (int before = 2; before < layer; ++before) {
    run_step(before, w, noise.at(before), cursor, /*prepare_next_key=*/true, nullptr);
  }
  if (target.upsample) cursor.rgb = upsample_fir(cursor.rgb);

  LayerState state;
  torch::Tensor style = style_of(target, w);
  state.key = cursor.key.defined() ? cursor.key : cursor.x * style.view({rows, style.size(1), 1, 1});
  state.indices = batch.indices.empty() ? std::vector<int64_t>(rows, -1) : batch.indices;
  state.extras["w"] = w;
  state.extras["style"] = style;
  state.extras["noise"] = noise.at(layer);
  if (cursor.rgb.defined()) state.extras["rgb"] = cursor.rgb;
  for (const auto& conv : convs_) {
    if (conv->layer > layer) state.extras["noise.layer" + std::to_string(conv->layer)] = noise.at(conv->layer);
  }
  return state;
}

torch::Tensor StyleGAN2::run_context_key(int layer, const SampleBatch& batch, const SamplingSettings& settings) const {
  at::NoGradGuard no_grad;
  const StyledConv& target = conv_at(layer);
  settings.validate();
  torch::Tensor w = map_and_truncate(batch, settings);
  NoiseMaps noise = make_noise_until(batch, settings.noise, layer - 1);

  Cursor cursor;
  cursor.with_rgb = false;
  cursor.x = constant_input_.expand({w.size(0), -1, -1, -1});
  for (int before = 2; before < layer; ++before) {
    run_step(before, w, noise.at(before), cursor, /*prepare_next_key=*/true, nullptr);
  }
  if (cursor.key.defined()) return cursor.key;
  torch::Tensor style = style_of(target, w);
  return cursor.x * style.view({w.size(0), style.size(1), 1, 1});
}

torch::Tensor StyleGAN2::run_target(int layer, const LayerState& state, const torch::Tensor& weight) const {
  const StyledConv& conv = conv_at(layer);
  std::vector<int64_t> expected = {conv.out_channels, conv.in_channels, 3, 3};
  if (weight.sizes() != at::IntArrayRef(expected)) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the weight has shape " + shape_text(weight) +
                        ", expected [" + std::to_string(conv.out_channels) + ", " + std::to_string(conv.in_channels) +
                        ", 3, 3]");
  }
  if (!state.key.defined() || state.key.dim() != 4 || state.key.size(1) != conv.in_channels) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the key must have shape [B, " +
                        std::to_string(conv.in_channels) + ", H, W], got " +
                        (state.key.defined() ? shape_text(state.key) : std::string("none")));
  }
  const torch::Tensor& style = extra(state, "style", layer);
  const torch::Tensor& noise = extra(state, "noise", layer);

  torch::Tensor float_weight = weight.to(at::kFloat);
  torch::Tensor conv_weight = stylegan2::prepare_conv_weight(float_weight, conv.upsample);
  torch::Tensor demod_weight = stylegan2::prepare_demod_weight(float_weight);
  torch::Tensor convolved = stylegan2::convolve(state.key, conv_weight, conv.upsample);
  int64_t shrink = conv.upsample ? 1 : 0;  // the blur trims the transposed convolution's extra pixel
  if (noise.dim() != 4 || noise.size(0) != convolved.size(0) || noise.size(2) != convolved.size(2) - shrink ||
      noise.size(3) != convolved.size(3) - shrink) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the noise has shape " + shape_text(noise) +
                        ", which does not match the layer output for key " + shape_text(state.key));
  }
  torch::Tensor demod = stylegan2::demodulation(style, demod_weight);
  return stylegan2::finish_layer(convolved, demod, conv.upsample, noise, conv.noise_strength, conv.activation_bias)
      .out;
}

std::optional<LayerExpansion> StyleGAN2::expand_target(int layer, const LayerState& state,
                                                       const torch::Tensor& d) const {
  const StyledConv& conv = conv_at(layer);
  // Each sample has its own style, so its own demodulation: the form covers one sample.
  if (!state.key.defined() || state.key.size(0) != 1) return std::nullopt;
  at::NoGradGuard no_grad;
  const torch::Tensor& style = extra(state, "style", layer);
  const torch::Tensor& noise = extra(state, "noise", layer);
  const int64_t rank = d.size(0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(conv.in_channels * 9));  // equalised lr
  torch::Tensor directions = d.to(at::kFloat);

  // The convolution (and blur) before demodulation, with W0 and with one-hot kernels.
  torch::Tensor base = stylegan2::convolve(state.key, conv.conv_weight, conv.upsample);
  torch::Tensor projected = at::einsum("ri,bihw->brhw", {directions, state.key});
  torch::Tensor kernels = one_hot_kernels(rank, 3) * scale;
  if (conv.upsample) kernels = kernels.transpose(0, 1).contiguous();
  torch::Tensor columns = stylegan2::convolve(projected, kernels, conv.upsample);
  if (conv.upsample) {
    base = stylegan2::blur_fir(base);
    columns = stylegan2::blur_fir(columns);
  }
  LayerExpansion expansion;
  expansion.base = flatten_channels(base);
  expansion.columns = flatten_channels(columns);
  expansion.gain = at::ones({conv.out_channels});
  expansion.shift = conv.activation_bias.unsqueeze(1).expand({conv.out_channels, expansion.pixels()});
  if (noise.defined()) expansion.shift = expansion.shift + flatten_channels(noise) * conv.noise_strength;

  // The modulated weight's squared norm per output channel, sum_i,k (scale * W[o, i, k] * s_i)^2,
  // expanded around W0 in Lambda[o].
  torch::Tensor style_squared = style[0].square();  // [C_in]
  expansion.demodulated = true;
  expansion.epsilon = stylegan2::kDemodEpsilon;
  expansion.norm = at::mm(style_squared.unsqueeze(0), conv.demod_weight)[0];
  expansion.cross = (scale * scale) * at::einsum("oiyx,ri->oryx", {conv.weight * style_squared.view({1, -1, 1, 1}),
                                                                   directions})
                                          .reshape({conv.out_channels, -1});
  torch::Tensor gram = (scale * scale) * at::mm(directions * style_squared.unsqueeze(0), directions.t());  // [r, r]
  expansion.quad = at::kron(gram, at::eye(9, at::kFloat));
  expansion.activation = LayerExpansion::Activation::kLeakyReLU;
  expansion.slope = 0.2;
  expansion.out_gain = std::sqrt(2.0);
  return expansion;
}

torch::Tensor StyleGAN2::run_render(int layer, const LayerState& state, const torch::Tensor& value) const {
  const StyledConv& conv = conv_at(layer);
  if (value.dim() != 4 || value.size(1) != conv.out_channels || value.size(2) != conv.value_size ||
      value.size(3) != conv.value_size) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the value map must have shape [B, " +
                        std::to_string(conv.out_channels) + ", " + std::to_string(conv.value_size) + ", " +
                        std::to_string(conv.value_size) + "], got " + shape_text(value));
  }
  const torch::Tensor& w = extra(state, "w", layer);
  auto found_rgb = state.extras.find("rgb");

  Cursor cursor;
  cursor.x = value;
  if (found_rgb != state.extras.end()) cursor.rgb = found_rgb->second;
  if (layer % 2 == 0) cursor.rgb = apply_to_rgb(layer, w, cursor.x, cursor.rgb, nullptr);
  for (int next = layer + 1; next <= 1 + static_cast<int>(convs_.size()); ++next) {
    run_step(next, w, extra(state, "noise.layer" + std::to_string(next), layer), cursor, /*prepare_next_key=*/true,
             nullptr);
  }
  return cursor.rgb;
}

LayerState StyleGAN2::crop(int layer, const LayerState& state, const Box& key_box,
                           const SamplingSettings& settings) const {
  const StyledConv& conv = conv_at(layer);
  settings.validate();
  if (!state.key.defined() || state.key.dim() != 4) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the state to crop has no key map");
  }
  int64_t height = state.key.size(2), width = state.key.size(3);
  if (key_box.empty() || key_box.top < 0 || key_box.left < 0 || key_box.bottom > height || key_box.right > width) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the crop box [" +
                        std::to_string(key_box.top) + ", " + std::to_string(key_box.left) + ", " +
                        std::to_string(key_box.bottom) + ", " + std::to_string(key_box.right) +
                        ") (top, left, bottom, right) is empty or outside the " + std::to_string(height) + "x" +
                        std::to_string(width) + " key map");
  }
  int64_t stride = conv.upsample ? 2 : 1;
  int64_t top = key_box.top * stride, left = key_box.left * stride;
  int64_t bottom = key_box.bottom * stride, right = key_box.right * stride;

  LayerState out;
  out.key = crop_map(state.key, key_box.top, key_box.left, key_box.bottom, key_box.right);
  out.indices = state.indices;
  for (const auto& [name, tensor] : state.extras) {
    if (name.rfind("noise.layer", 0) == 0) continue;
    if (name == "noise" && settings.noise == "reference") {
      out.extras[name] = stylegan2::reference_noise(tensor.size(0), bottom - top, right - left);
    } else if (name == "noise" || name == "rgb") {
      out.extras[name] = crop_map(tensor, top, left, bottom, right);
    } else {
      out.extras[name] = tensor;
    }
  }
  return out;
}

torch::Tensor StyleGAN2::weight(int layer) const { return conv_at(layer).weight.clone(); }

void StyleGAN2::set_weight(int layer, const torch::Tensor& canonical) {
  StyledConv& conv = conv_at(layer);
  if (canonical.sizes() != conv.weight.sizes()) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the new weight has shape " +
                        shape_text(canonical) + ", expected " + shape_text(conv.weight));
  }
  if (!canonical.is_floating_point()) {
    throw invalid_input("StyleGAN2 layer " + std::to_string(layer) + ": the new weight must be floating point");
  }
  at::NoGradGuard no_grad;
  conv.weight = canonical.detach().to(at::kCPU, at::kFloat).contiguous().clone();
  conv.conv_weight = stylegan2::prepare_conv_weight(conv.weight, conv.upsample);
  conv.demod_weight = stylegan2::prepare_demod_weight(conv.weight);
}

torch::Tensor StyleGAN2::to_checkpoint_layout(int layer, const torch::Tensor& canonical) const {
  this->layer(layer);  // validates the number
  return canonical.unsqueeze(0).contiguous();  // rosinality stores [1, out, in, 3, 3]
}

std::string StyleGAN2::describe() const {
  std::ostringstream out;
  out << "StyleGAN2 " << resolution_ << "x" << resolution_ << " (" << source_ << ")\n";
  out << "  style size " << style_size_ << ", " << mapping_.size() << " mapping layers, " << parameter_count_
      << " parameters\n";
  out << "  latent_avg: " << latent_avg_origin_ << "\n";
  out << "  noise buffers: " << (has_stored_noise_ ? "stored in the checkpoint" : "none (noise mode \"stored\" is unavailable)")
      << "\n";
  out << "  layers (key C x H x W -> value C x H x W):\n";
  for (const LayerInfo& info : layer_infos_) {
    std::string key = std::to_string(info.key_channels) + "x" + std::to_string(info.key_size) + "x" +
                      std::to_string(info.key_size);
    std::string value = std::to_string(info.value_channels) + "x" + std::to_string(info.value_size) + "x" +
                        std::to_string(info.value_size);
    out << "    " << std::left << std::setw(9) << info.name << std::setw(13) << key << "-> " << std::setw(13) << value
        << std::setw(12) << (info.stride() == 2 ? "upsampling" : "") << info.weight_name
        << (info.index == default_layer() ? "  [default]" : "") << "\n";
  }
  return out.str();
}

}  // namespace rankone

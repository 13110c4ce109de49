#include "rankone/models/sequential.h"

#include "rankone/error.h"
#include "rankone/models/latents.h"

#include <ATen/ATen.h>

#include <sstream>

namespace rankone {

namespace {

using nlohmann::json;

enum class ConvType { kConv, kConvTranspose };
enum class NormType { kNone, kBatchNorm, kPixelNorm };
enum class Activation { kNone, kReLU, kLeakyReLU, kTanh };

struct Block {
  int64_t upsample = 1;
  ConvType conv_type = ConvType::kConv;
  std::string weight_name, bias_name;
  int64_t in = 0, out = 0, kernel = 0, stride = 1, padding = 0;
  at::Tensor weight;  // native layout: Conv2d [out, in, k, k], ConvTranspose2d [in, out, k, k]
  at::Tensor bias;    // [out] or undefined
  NormType norm = NormType::kNone;
  std::string norm_prefix;
  double eps = 1e-5;
  at::Tensor bn_weight, bn_bias, bn_mean, bn_var;
  Activation activation = Activation::kNone;
  double slope = 0.01;
  int64_t key_size = 0, value_size = 0;  // spatial sizes of the conv input and the block output
};

template <typename T>
T card_field(const json& object, const std::string& key, const std::string& where) {
  if (!object.contains(key)) throw invalid_input(where + ": missing field '" + key + "'");
  try {
    return object.at(key).get<T>();
  } catch (const json::exception&) {
    throw invalid_input(where + ": field '" + key + "' has the wrong type (" + object.at(key).dump() + ")");
  }
}

std::string shape_text(at::IntArrayRef shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

at::Tensor card_tensor(const TensorFile& weights, const std::string& name, std::vector<int64_t> expected,
                       const std::string& card_path) {
  if (!weights.contains(name)) {
    throw invalid_input(card_path + ": tensor '" + name + "' named by the card is not in " + weights.path +
                        " (run `rankone info --model " + weights.path + "` to list its tensors)");
  }
  at::Tensor tensor = weights.get(name);
  if (tensor.sizes() != at::IntArrayRef(expected)) {
    throw invalid_input(card_path + ": tensor '" + name + "' in " + weights.path + " has shape " +
                        shape_text(tensor.sizes()) + " but the card expects " + shape_text(expected));
  }
  tensor = tensor.to(at::kFloat).contiguous();
  if (!at::isfinite(tensor).all().item<bool>()) {
    throw invalid_input(weights.path + ": tensor '" + name + "' contains NaN or infinite values");
  }
  return tensor;
}

Block parse_block(const json& spec, size_t index, const std::string& card_path, const TensorFile& weights) {
  std::string where = card_path + ": blocks[" + std::to_string(index) + "]";
  Block block;
  block.upsample = spec.value("upsample", int64_t{1});
  if (block.upsample < 1 || block.upsample > 8) throw invalid_input(where + ": upsample must be 1 to 8");

  const json conv = card_field<json>(spec, "conv", where);
  std::string conv_where = where + ".conv";
  std::string type = card_field<std::string>(conv, "type", conv_where);
  if (type == "conv") {
    block.conv_type = ConvType::kConv;
  } else if (type == "conv_transpose") {
    block.conv_type = ConvType::kConvTranspose;
  } else {
    throw invalid_input(conv_where + ": unknown type '" + type + "' (expected conv or conv_transpose)");
  }
  block.in = card_field<int64_t>(conv, "in", conv_where);
  block.out = card_field<int64_t>(conv, "out", conv_where);
  block.kernel = card_field<int64_t>(conv, "kernel", conv_where);
  block.stride = conv.value("stride", int64_t{1});
  block.padding = conv.value("padding", int64_t{0});
  if (block.in < 1 || block.out < 1 || block.kernel < 1 || block.stride < 1 || block.padding < 0) {
    throw invalid_input(conv_where + ": in, out, kernel and stride must be positive and padding non-negative");
  }
  block.weight_name = card_field<std::string>(conv, "weight", conv_where);
  std::vector<int64_t> weight_shape = block.conv_type == ConvType::kConv
                                          ? std::vector<int64_t>{block.out, block.in, block.kernel, block.kernel}
                                          : std::vector<int64_t>{block.in, block.out, block.kernel, block.kernel};
  block.weight = card_tensor(weights, block.weight_name, weight_shape, card_path);
  if (conv.contains("bias") && !conv.at("bias").is_null()) {
    block.bias_name = card_field<std::string>(conv, "bias", conv_where);
    block.bias = card_tensor(weights, block.bias_name, {block.out}, card_path);
  }

  json norm = spec.value("norm", json{{"type", "none"}});
  std::string norm_type = card_field<std::string>(norm, "type", where + ".norm");
  if (norm_type == "batch_norm") {
    block.norm = NormType::kBatchNorm;
    block.norm_prefix = card_field<std::string>(norm, "prefix", where + ".norm");
    block.eps = norm.value("eps", 1e-5);
    block.bn_weight = card_tensor(weights, block.norm_prefix + ".weight", {block.out}, card_path);
    block.bn_bias = card_tensor(weights, block.norm_prefix + ".bias", {block.out}, card_path);
    block.bn_mean = card_tensor(weights, block.norm_prefix + ".running_mean", {block.out}, card_path);
    block.bn_var = card_tensor(weights, block.norm_prefix + ".running_var", {block.out}, card_path);
  } else if (norm_type == "pixel_norm") {
    block.norm = NormType::kPixelNorm;
    block.eps = norm.value("eps", 1e-8);
  } else if (norm_type != "none") {
    throw invalid_input(where + ".norm: unknown type '" + norm_type + "' (expected batch_norm, pixel_norm or none)");
  }

  json activation = spec.value("activation", json{{"type", "none"}});
  std::string activation_type = card_field<std::string>(activation, "type", where + ".activation");
  if (activation_type == "relu") {
    block.activation = Activation::kReLU;
  } else if (activation_type == "leaky_relu") {
    block.activation = Activation::kLeakyReLU;
    block.slope = activation.value("slope", 0.01);
  } else if (activation_type == "tanh") {
    block.activation = Activation::kTanh;
  } else if (activation_type != "none") {
    throw invalid_input(where + ".activation: unknown type '" + activation_type +
                        "' (expected relu, leaky_relu, tanh or none)");
  }
  return block;
}

class SequentialGenerator : public Generator {
 public:
  SequentialGenerator(const json& card, const std::string& card_path, const TensorFile& weights)
      : card_path_(card_path), weights_path_(weights.path) {
    name_ = card.value("name", std::string("sequential"));
    const json latent = card_field<json>(card, "latent", card_path);
    latent_size_ = card_field<int64_t>(latent, "size", card_path + ": latent");
    distribution_ = parse_latent_distribution(latent.value("distribution", std::string("normal")));
    const json blocks = card_field<json>(card, "blocks", card_path);
    if (!blocks.is_array() || blocks.empty()) throw invalid_input(card_path + ": 'blocks' must be a non-empty list");

    int64_t channels = latent_size_, size = 1;
    for (size_t i = 0; i < blocks.size(); ++i) {
      Block block = parse_block(blocks[i], i, card_path, weights);
      if (block.in != channels) {
        throw invalid_input(card_path + ": blocks[" + std::to_string(i) + "] takes " + std::to_string(block.in) +
                            " channels but the previous block gives " + std::to_string(channels));
      }
      block.key_size = size * block.upsample;
      block.value_size = block.conv_type == ConvType::kConv
                             ? (block.key_size + 2 * block.padding - block.kernel) / block.stride + 1
                             : (block.key_size - 1) * block.stride - 2 * block.padding + block.kernel;
      if (block.value_size < 1) {
        throw invalid_input(card_path + ": blocks[" + std::to_string(i) + "] gives an empty output");
      }
      channels = block.out;
      size = block.value_size;
      blocks_.push_back(std::move(block));
    }
    if (channels != 3) throw invalid_input(card_path + ": the last block must give 3 channels (RGB)");

    for (size_t i = 0; i < blocks_.size(); ++i) {
      const Block& block = blocks_[i];
      if (block.key_size < 2) continue;  // a 1x1 key (the latent) has no spatial mask to paint
      LayerInfo info;
      info.index = static_cast<int>(i);
      info.name = "block" + std::to_string(i);
      info.weight_name = block.weight_name;
      info.key_channels = block.in;
      info.key_size = block.key_size;
      info.value_channels = block.out;
      info.value_size = block.value_size;
      info.kernel_size = block.kernel;
      layers_.push_back(info);
    }
    if (layers_.empty()) throw invalid_input(card_path + ": the card has no block with a spatial input to rewrite");
    default_layer_ = card.value("default_layer", layers_[layers_.size() / 2].index);
    layer(default_layer_);  // validates

    std::vector<at::Tensor> parameters;
    for (const Block& block : blocks_) {
      for (const at::Tensor& t : {block.weight, block.bias, block.bn_weight, block.bn_bias, block.bn_mean, block.bn_var}) {
        if (t.defined()) parameters.push_back(t);
      }
    }
    std::string digests;
    for (const at::Tensor& t : parameters) {
      digests += sha256_hex(t);
      parameter_count_ += t.numel();
    }
    fingerprint_ = sha256_hex(digests.data(), digests.size());
  }

  std::string architecture() const override { return "sequential"; }

  std::string describe() const override {
    std::ostringstream out;
    out << "architecture: sequential (" << name_ << ", card " << card_path_ << ")\n";
    out << "latent: " << latent_size_ << " values, "
        << (distribution_ == LatentDistribution::kNormal ? "standard normal" : "uniform in [-1, 1]") << "\n";
    out << "image: 3 x " << image_size() << " x " << image_size() << "\n";
    out << "parameters: " << parameter_count_ << "\n";
    out << "blocks:\n";
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const Block& b = blocks_[i];
      out << "  " << i << ": " << (b.upsample > 1 ? "upsample x" + std::to_string(b.upsample) + ", " : "")
          << (b.conv_type == ConvType::kConv ? "conv" : "conv_transpose") << " k" << b.kernel << " s" << b.stride
          << " p" << b.padding << (b.bias.defined() ? " +bias" : "")
          << norm_suffix(b.norm)
          << ", " << activation_name(b) << ": " << b.in << "x" << b.key_size << "x" << b.key_size << " -> " << b.out
          << "x" << b.value_size << "x" << b.value_size << "\n";
    }
    out << "rewritable layers (key -> value):\n";
    for (const LayerInfo& info : layers_) {
      out << "  layer " << info.index << " (" << info.name << ", " << info.weight_name << "): " << info.key_channels
          << "x" << info.key_size << "x" << info.key_size << " -> " << info.value_channels << "x" << info.value_size
          << "x" << info.value_size << (info.index == default_layer_ ? "  [default]" : "") << "\n";
    }
    return out.str();
  }

  int64_t latent_size() const override { return latent_size_; }
  int64_t image_size() const override { return blocks_.back().value_size; }
  int64_t parameter_count() const override { return parameter_count_; }
  const std::vector<LayerInfo>& layers() const override { return layers_; }
  int default_layer() const override { return default_layer_; }

  SampleBatch latents(const std::vector<int64_t>& indices, const SamplingSettings& settings) const override {
    return make_latents(indices, latent_size_, distribution_, settings);
  }

  at::Tensor generate(const SampleBatch& batch, const SamplingSettings& settings) const override {
    check_latents(batch);
    at::Tensor x = batch.z.view({batch.z.size(0), latent_size_, 1, 1});
    for (const Block& block : blocks_) x = run_block(block, upsample(block, x), block.weight);
    return x;
  }

  LayerState run_context(int layer_index, const SampleBatch& batch, const SamplingSettings& settings) const override {
    layer(layer_index);
    check_latents(batch);
    at::Tensor x = batch.z.view({batch.z.size(0), latent_size_, 1, 1});
    for (int i = 0; i < layer_index; ++i) x = run_block(blocks_[i], upsample(blocks_[i], x), blocks_[i].weight);
    LayerState state;
    state.key = upsample(blocks_[layer_index], x);
    state.indices = batch.indices;
    return state;
  }

  at::Tensor run_target(int layer_index, const LayerState& state, const at::Tensor& weight) const override {
    const Block& block = blocks_.at(layer(layer_index).index);
    return run_block(block, state.key, to_native(block, weight));
  }

  std::optional<LayerExpansion> expand_target(int layer_index, const LayerState& state,
                                              const at::Tensor& d) const override {
    const Block& block = blocks_.at(layer(layer_index).index);
    if (block.norm == NormType::kPixelNorm) return std::nullopt;  // it mixes the output channels
    at::NoGradGuard no_grad;

    // The convolution with W0, and with one-hot kernels on the projected key.
    at::Tensor projected = at::einsum("ri,bihw->brhw", {d.to(at::kFloat), state.key});
    at::Tensor kernels = one_hot_kernels(d.size(0), block.kernel);
    at::Tensor base, columns;
    if (block.conv_type == ConvType::kConv) {
      base = at::conv2d(state.key, block.weight, {}, block.stride, block.padding);
      columns = at::conv2d(projected, kernels, {}, block.stride, block.padding);
    } else {
      base = at::conv_transpose2d(state.key, block.weight, {}, block.stride, block.padding);
      columns = at::conv_transpose2d(projected, kernels.transpose(0, 1), {}, block.stride, block.padding);
    }
    LayerExpansion expansion;
    expansion.base = flatten_channels(base);
    expansion.columns = flatten_channels(columns);

    // Bias and inference-mode batch norm are one affine map per output channel.
    at::Tensor bias = block.bias.defined() ? block.bias : at::zeros({block.out});
    if (block.norm == NormType::kBatchNorm) {
      expansion.gain = block.bn_weight * at::rsqrt(block.bn_var + block.eps);
      bias = (bias - block.bn_mean) * expansion.gain + block.bn_bias;
    } else {
      expansion.gain = at::ones({block.out});
    }
    expansion.shift = bias.unsqueeze(1).expand({block.out, expansion.pixels()});

    switch (block.activation) {
      case Activation::kReLU:
        expansion.activation = LayerExpansion::Activation::kLeakyReLU;
        expansion.slope = 0;
        break;
      case Activation::kLeakyReLU:
        expansion.activation = LayerExpansion::Activation::kLeakyReLU;
        expansion.slope = block.slope;
        break;
      case Activation::kTanh:
        expansion.activation = LayerExpansion::Activation::kTanh;
        break;
      case Activation::kNone:
        expansion.activation = LayerExpansion::Activation::kIdentity;
        break;
    }
    return expansion;
  }

  at::Tensor run_render(int layer_index, const LayerState& state, const at::Tensor& value) const override {
    layer(layer_index);
    at::Tensor x = value;
    for (size_t i = layer_index + 1; i < blocks_.size(); ++i) {
      x = run_block(blocks_[i], upsample(blocks_[i], x), blocks_[i].weight);
    }
    return x;
  }

  LayerState crop(int layer_index, const LayerState& state, const Box& key_box,
                  const SamplingSettings& settings) const override {
    layer(layer_index);
    LayerState cropped;
    cropped.key = state.key.slice(2, key_box.top, key_box.bottom).slice(3, key_box.left, key_box.right);
    cropped.indices = state.indices;
    return cropped;
  }

  at::Tensor weight(int layer_index) const override {
    const Block& block = blocks_.at(layer(layer_index).index);
    at::Tensor w = block.conv_type == ConvType::kConv ? block.weight : block.weight.transpose(0, 1);
    return w.contiguous().clone();
  }

  void set_weight(int layer_index, const at::Tensor& canonical) override {
    Block& block = blocks_.at(layer(layer_index).index);
    at::Tensor native = to_native(block, canonical.detach().to(at::kFloat)).contiguous();
    if (native.sizes() != block.weight.sizes()) {
      throw invalid_input("set_weight: layer " + std::to_string(layer_index) + " expects a weight of shape " +
                          shape_text(weight(layer_index).sizes()) + ", got " + shape_text(canonical.sizes()));
    }
    block.weight = native.clone();
  }

  at::Tensor to_checkpoint_layout(int layer_index, const at::Tensor& canonical) const override {
    return to_native(blocks_.at(layer(layer_index).index), canonical).contiguous();
  }

  std::string fingerprint() const override { return fingerprint_; }
  std::string source() const override { return card_path_; }

 private:
  static const char* norm_suffix(NormType norm) {
    if (norm == NormType::kBatchNorm) return ", batch_norm";
    if (norm == NormType::kPixelNorm) return ", pixel_norm";
    return "";
  }

  static std::string activation_name(const Block& b) {
    switch (b.activation) {
      case Activation::kReLU: return "relu";
      case Activation::kLeakyReLU: return "leaky_relu(" + std::to_string(b.slope).substr(0, 4) + ")";
      case Activation::kTanh: return "tanh";
      default: return "linear";
    }
  }

  void check_latents(const SampleBatch& batch) const {
    if (batch.z.dim() != 2 || batch.z.size(1) != latent_size_) {
      throw invalid_input("latents have shape " + shape_text(batch.z.sizes()) + " but " + name_ +
                          " expects [N, " + std::to_string(latent_size_) + "]");
    }
  }

  static at::Tensor to_native(const Block& block, const at::Tensor& canonical) {
    return block.conv_type == ConvType::kConv ? canonical : canonical.transpose(0, 1);
  }

  static at::Tensor upsample(const Block& block, const at::Tensor& x) {
    if (block.upsample == 1) return x;
    return at::upsample_nearest2d(x, {x.size(2) * block.upsample, x.size(3) * block.upsample});
  }

  static at::Tensor run_block(const Block& block, const at::Tensor& key, const at::Tensor& native_weight) {
    at::Tensor x;
    if (block.conv_type == ConvType::kConv) {
      x = at::conv2d(key, native_weight, block.bias, block.stride, block.padding);
    } else {
      x = at::conv_transpose2d(key, native_weight, block.bias, block.stride, block.padding);
    }
    switch (block.norm) {
      case NormType::kBatchNorm:
        x = at::batch_norm(x, block.bn_weight, block.bn_bias, block.bn_mean, block.bn_var, /*training=*/false,
                           /*momentum=*/0.0, block.eps, /*cudnn_enabled=*/false);
        break;
      case NormType::kPixelNorm:
        x = x * at::rsqrt(x.pow(2).mean(1, /*keepdim=*/true) + block.eps);
        break;
      case NormType::kNone:
        break;
    }
    switch (block.activation) {
      case Activation::kReLU: return at::relu(x);
      case Activation::kLeakyReLU: return at::leaky_relu(x, block.slope);
      case Activation::kTanh: return at::tanh(x);
      case Activation::kNone: return x;
    }
    return x;
  }

  std::string name_, card_path_, weights_path_;
  int64_t latent_size_ = 0;
  LatentDistribution distribution_ = LatentDistribution::kNormal;
  std::vector<Block> blocks_;
  std::vector<LayerInfo> layers_;
  int default_layer_ = 0;
  int64_t parameter_count_ = 0;
  std::string fingerprint_;
};

}  // namespace

std::unique_ptr<Generator> load_sequential(const json& card, const std::string& card_path, const TensorFile& weights) {
  return std::make_unique<SequentialGenerator>(card, card_path, weights);
}

}  // namespace rankone

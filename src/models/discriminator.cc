#include "rankone/models/discriminator.h"

#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/generator.h"

#include <ATen/ATen.h>

#include <cmath>

namespace rankone {

namespace {

constexpr int64_t kKernel = 4;
constexpr int64_t kStride = 2;
constexpr int64_t kPadding = 1;
constexpr char kFirstWeightSuffix[] = ".0.0.weight";

std::string shape_text(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Returns the tensor as contiguous float32 after checking its shape and values.
at::Tensor checked_tensor(const TensorFile& file, const std::string& name, const std::vector<int64_t>& shape) {
  if (!file.contains(name)) {
    throw invalid_input(file.path + ": discriminator tensor '" + name + "' is missing (expected a DCGAN "
                        "discriminator state dict; run `rankone info --model` on the file to list its tensors)");
  }
  at::Tensor tensor = file.get(name);
  if (tensor.sizes() != at::IntArrayRef(shape)) {
    throw invalid_input(file.path + ": discriminator tensor '" + name + "' has shape " + shape_text(tensor.sizes()) +
                        ", expected " + shape_text(shape));
  }
  tensor = tensor.to(at::kFloat).contiguous();
  if (!at::isfinite(tensor).all().item<bool>()) {
    throw invalid_input(file.path + ": discriminator tensor '" + name + "' contains NaN or infinite values");
  }
  return tensor;
}

// The name before ".0.0.weight" of the first 4-D tensor so named, e.g. "discriminator".
std::string find_prefix(const TensorFile& file) {
  const size_t suffix_size = sizeof(kFirstWeightSuffix) - 1;
  for (const std::string& name : file.names) {
    if (name.size() > suffix_size && name.compare(name.size() - suffix_size, suffix_size, kFirstWeightSuffix) == 0 &&
        file.get(name).dim() == 4) {
      return name.substr(0, name.size() - suffix_size);
    }
  }
  throw invalid_input(file.path + ": no discriminator found: no 4-D tensor is named '<prefix>.0.0.weight' "
                      "(expected the state dict of a DCGAN discriminator such as discriminator.pt)");
}

}  // namespace

Discriminator Discriminator::load(const std::string& path) {
  TensorFile file = load_tensor_file(path);
  std::string prefix = find_prefix(file);
  Discriminator critic;
  critic.source_ = path;

  // convolution blocks
  int64_t channels = 3;
  int block_count = 0;
  while (file.contains(prefix + "." + std::to_string(block_count) + ".0.weight")) {
    std::string name = prefix + "." + std::to_string(block_count);
    int64_t out = file.get(name + ".0.weight").size(0);
    Block block;
    block.weight = checked_tensor(file, name + ".0.weight", {out, channels, kKernel, kKernel});
    if (block_count == 0) {
      block.bias = checked_tensor(file, name + ".0.bias", {out});
    } else {
      block.bn_weight = checked_tensor(file, name + ".1.weight", {out});
      block.bn_bias = checked_tensor(file, name + ".1.bias", {out});
      block.bn_mean = checked_tensor(file, name + ".1.running_mean", {out});
      block.bn_var = checked_tensor(file, name + ".1.running_var", {out});
      if ((block.bn_var < 0).any().item<bool>()) {
        throw invalid_input(path + ": discriminator tensor '" + name + ".1.running_var' has negative variances");
      }
    }
    critic.blocks_.push_back(block);
    channels = out;
    ++block_count;
  }

  // linear layer: the first "<prefix>.N.weight" after the blocks (N is one past the flatten step)
  std::string linear;
  for (int index = block_count; index < block_count + 4 && linear.empty(); ++index) {
    if (file.contains(prefix + "." + std::to_string(index) + ".weight")) linear = prefix + "." + std::to_string(index);
  }
  if (linear.empty()) {
    throw invalid_input(path + ": discriminator has no linear layer '" + prefix + "." + std::to_string(block_count + 1) +
                        ".weight' after its " + std::to_string(block_count) + " convolution blocks");
  }
  at::Tensor weight = file.get(linear + ".weight");
  int64_t features = weight.dim() == 2 ? weight.size(1) : 0;
  int64_t side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(features) / channels)));
  if (features == 0 || side < 1 || side * side * channels != features) {
    throw invalid_input(path + ": discriminator tensor '" + linear + ".weight' has shape " +
                        shape_text(weight.sizes()) + ", but the last block gives " + std::to_string(channels) +
                        " channels, so expected [1, " + std::to_string(channels) + " * s * s]");
  }
  critic.linear_weight_ = checked_tensor(file, linear + ".weight", {1, features});
  critic.linear_bias_ = checked_tensor(file, linear + ".bias", {1});
  critic.image_size_ = side << block_count;

  std::string digests;
  for (const Block& block : critic.blocks_) {
    for (const at::Tensor& t : {block.weight, block.bias, block.bn_weight, block.bn_bias, block.bn_mean, block.bn_var}) {
      if (t.defined()) digests += sha256_hex(t);
    }
  }
  digests += sha256_hex(critic.linear_weight_) + sha256_hex(critic.linear_bias_);
  critic.fingerprint_ = sha256_hex(digests.data(), digests.size());
  return critic;
}

torch::Tensor Discriminator::logits(const torch::Tensor& images) const {
  if (images.dim() != 4 || images.size(1) != 3 || images.size(2) != image_size_ || images.size(3) != image_size_) {
    throw invalid_input("discriminator " + source_ + " scores images [B, 3, " + std::to_string(image_size_) + ", " +
                        std::to_string(image_size_) + "], got " + shape_text(images.sizes()));
  }
  at::Tensor x = images.to(at::kFloat);
  for (const Block& block : blocks_) {
    x = at::conv2d(x, block.weight, block.bias, kStride, kPadding);
    if (block.bn_weight.defined()) {
      x = at::batch_norm(x, block.bn_weight, block.bn_bias, block.bn_mean, block.bn_var, /*training=*/false,
                         /*momentum=*/0.0, kBatchNormEps, /*cudnn_enabled=*/false);
    }
    x = at::leaky_relu(x, kLeakySlope);
  }
  return at::linear(x.flatten(1), linear_weight_, linear_bias_).squeeze(1);
}

}  // namespace rankone

// A DCGAN discriminator used as a realism score: the logit that the critic trained with a
// generator gives an image (higher means "looks real").
//
//   rankone::Discriminator critic = rankone::Discriminator::load("discriminator.pt");
//   torch::Tensor logits = critic.logits(images);  // images [B, 3, 32, 32] in [-1, 1] -> [B]
//
// Architecture (eval mode), read from tensors named `<prefix>.N.*` where the prefix is the
// name before the first ".0.0.weight" (e.g. "discriminator"):
//   block 0:      Conv2d k4 s2 p1 with bias, LeakyReLU(0.2)
//   blocks 1..n:  Conv2d k4 s2 p1 without bias, BatchNorm2d (running statistics), LeakyReLU(0.2)
//   last:         flatten (channel, row, column order), Linear(C * s * s, 1)
// Channel counts, the number of blocks and the image size come from the tensor shapes.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace rankone {

class Discriminator {
 public:
  /// Loads the weights from a PyTorch checkpoint or safetensors file. Throws an invalid-input
  /// Error naming the file and the tensor that is missing, has the wrong shape or is not finite.
  static Discriminator load(const std::string& path);

  /// Logits [B] (float32) of images [B, 3, S, S] in [-1, 1] with S == image_size().
  /// Throws an invalid-input Error for another shape.
  torch::Tensor logits(const torch::Tensor& images) const;

  /// Side of the square images the linear layer was trained for, in pixels.
  int64_t image_size() const { return image_size_; }
  /// sha256 (hex) over the weights, to tell which critic produced saved scores.
  const std::string& fingerprint() const { return fingerprint_; }
  const std::string& source() const { return source_; }

  /// One convolution block.
  struct Block {
    torch::Tensor weight;  // [C_out, C_in, 4, 4]
    torch::Tensor bias;    // [C_out] (block 0) or undefined
    torch::Tensor bn_weight, bn_bias, bn_mean, bn_var;  // [C_out] or undefined (block 0)
  };
  const std::vector<Block>& blocks() const { return blocks_; }
  const torch::Tensor& linear_weight() const { return linear_weight_; }  // [1, C * s * s]
  const torch::Tensor& linear_bias() const { return linear_bias_; }      // [1]

  static constexpr double kLeakySlope = 0.2;
  static constexpr double kBatchNormEps = 1e-5;

 private:
  std::vector<Block> blocks_;
  torch::Tensor linear_weight_, linear_bias_;
  int64_t image_size_ = 0;
  std::string fingerprint_, source_;
};

}  // namespace rankone

// Sequential convolutional generators (DCGAN, Progressive-GAN-like) described
// by a model card: a small JSON file that maps checkpoint tensors to blocks.
//
// Card format (all sizes in pixels or channels):
//   {
//     "name": "dcgan-celeba32", "architecture": "sequential",
//     "weights": {"file": "generator.pt", "sha256": "...", "url": "https://..."},
//     "latent": {"size": 100, "distribution": "uniform"},     // or "normal"
//     "default_layer": 2,
//     "blocks": [
//       {"upsample": 1,                                        // nearest, before the conv
//        "conv": {"type": "conv_transpose", "weight": "net.0.weight", "bias": null,
//                 "in": 100, "out": 256, "kernel": 4, "stride": 1, "padding": 0},
//        "norm": {"type": "batch_norm", "prefix": "net.1", "eps": 1e-5},  // or pixel_norm, none
//        "activation": {"type": "leaky_relu", "slope": 0.2}}             // relu, tanh, none
//     ]
//   }
// Block L's key is the input of its convolution (after upsampling); its value is
// the block output. The first block's input is the latent as a 1x1 map.
#pragma once

#include "rankone/formats/tensor_file.h"
#include "rankone/models/generator.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace rankone {

/// Builds a sequential generator from a parsed card and its weights. Checks every tensor
/// shape against the card and throws an invalid-input Error naming the first mismatch.
std::unique_ptr<Generator> load_sequential(const nlohmann::json& card, const std::string& card_path,
                                           const TensorFile& weights);

}  // namespace rankone

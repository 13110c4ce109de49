#include "rankone/models/generator.h"

#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/models/model_store.h"
#include "rankone/models/sequential.h"
#include "rankone/models/stylegan2.h"

#include <openssl/sha.h>

#include <filesystem>
#include <fstream>

namespace rankone {

nlohmann::json SamplingSettings::to_json() const {
  return {{"latents", latents}, {"noise", noise}, {"truncation", truncation}};
}

SamplingSettings SamplingSettings::from_json(const nlohmann::json& j) {
  SamplingSettings settings;
  if (!j.is_object()) throw invalid_input("sampling settings must be a JSON object, got " + j.dump());
  try {
    if (j.contains("latents")) settings.latents = j.at("latents").get<std::string>();
    if (j.contains("noise")) settings.noise = j.at("noise").get<std::string>();
    if (j.contains("truncation")) settings.truncation = j.at("truncation").get<double>();
  } catch (const nlohmann::json::exception&) {
    throw invalid_input("sampling settings: wrong field type in " + j.dump() +
                        " (latents and noise are strings, truncation a number)");
  }
  settings.validate();
  return settings;
}

void SamplingSettings::validate() const {
  if (latents != "rankone" && latents != "reference") {
    throw invalid_input("unknown latent stream '" + latents + "': expected rankone or reference");
  }
  if (noise != "sample" && noise != "stored" && noise != "reference" && noise != "zero") {
    throw invalid_input("unknown noise mode '" + noise + "': expected sample, stored, reference or zero");
  }
  if (!(truncation >= 0.0 && truncation <= 2.0)) {
    throw invalid_input("truncation " + std::to_string(truncation) + " is out of range: use 0 to 2 (1 disables it)");
  }
}

const LayerInfo& Generator::layer(int index) const {
  for (const LayerInfo& info : layers()) {
    if (info.index == index) return info;
  }
  std::string valid;
  for (const LayerInfo& info : layers()) valid += (valid.empty() ? "" : ", ") + std::to_string(info.index);
  throw invalid_input("unknown layer " + std::to_string(index) + ": this model's rewritable layers are " + valid);
}

torch::Tensor Generator::run_context_key(int layer, const SampleBatch& batch, const SamplingSettings& settings) const {
  return run_context(layer, batch, settings).key;
}

std::optional<LayerExpansion> Generator::expand_target(int, const LayerState&, const torch::Tensor&) const {
  return std::nullopt;
}

std::string sha256_hex(const void* data, size_t size) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(static_cast<const unsigned char*>(data), size, digest);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char byte : digest) {
    out += kHex[byte >> 4];
    out += kHex[byte & 15];
  }
  return out;
}

std::string sha256_hex(const torch::Tensor& tensor) {
  torch::Tensor contiguous = tensor.cpu().contiguous();
  return sha256_hex(contiguous.data_ptr(), contiguous.numel() * contiguous.element_size());
}

std::unique_ptr<Generator> load_generator(const std::string& model) {
  std::string path = resolve_model_path(model);
  if (std::filesystem::path(path).extension() == ".json") {
    std::ifstream in(path);
    nlohmann::json card;
    try {
      card = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw invalid_input(path + ": invalid JSON in the model card: " + e.what());
    }
    std::string architecture = card.value("architecture", "sequential");
    if (architecture != "sequential") {
      throw invalid_input(path + ": model cards describe sequential generators, but this one says '" +
                          architecture + "' (load a StyleGAN2 checkpoint directly)");
    }
    if (!card.contains("weights") || !card["weights"].is_string()) {
      throw invalid_input(path + ": the card has no 'weights' field naming its checkpoint file");
    }
    std::string weights_path = resolve_card_file(path, card["weights"].get<std::string>());
    return load_sequential(card, path, load_tensor_file(weights_path));
  }

  TensorFile file = load_tensor_file(path);
  if (is_stylegan2(file)) return load_stylegan2(file);
  throw invalid_input(path + ": not a known generator checkpoint (no StyleGAN2 tensors such as "
                      "'g_ema.style.1.weight'); a sequential generator needs a model card (.json)");
}

}  // namespace rankone

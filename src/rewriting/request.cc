#include "rankone/rewriting/request.h"

#include "rankone/error.h"
#include "rankone/formats/image.h"
#include "rankone/rewriting/masks.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <type_traits>

namespace rankone {

using nlohmann::json;

json SolverSettings::to_json() const { return {{"solver", solver}, {"steps", steps}, {"lr", lr}, {"piter", piter}}; }

void SolverSettings::validate() const {
  if (solver != "direct" && solver != "adam" && solver != "adam-lambda") {
    throw invalid_input("unknown solver '" + solver + "': expected direct, adam or adam-lambda");
  }
  if (steps < 1 || steps > 1000000) throw invalid_input("steps " + std::to_string(steps) + " out of range 1 to 1000000");
  if (!(lr > 0 && lr < 100)) throw invalid_input("learning rate " + std::to_string(lr) + " out of range (0, 100)");
  if (piter < 1) throw invalid_input("piter " + std::to_string(piter) + " must be at least 1");
}

int64_t StatisticsSettings::effective_batch_size(const SamplingSettings& sampling) const {
  if (batch_size > 0) return batch_size;
  return sampling.noise == "reference" ? 10 : 50;
}

json StatisticsSettings::to_json() const { return {{"samples", samples}, {"batch_size", batch_size}}; }

namespace {

MaskedImage parse_masked_image(const json& entry, const std::string& where) {
  if (!entry.is_array() || entry.size() != 2 || !entry[0].is_number_integer() || !entry[1].is_string()) {
    throw invalid_input(where + " must be [image number, \"data:image/png;base64,...\"], got " +
                        entry.dump().substr(0, 80));
  }
  MaskedImage masked;
  masked.image = entry[0].get<int64_t>();
  if (masked.image < 0) throw invalid_input(where + ": image number " + std::to_string(masked.image) + " is negative");
  masked.url = entry[1].get<std::string>();
  masked.mask = decode_mask_url(masked.url, where);
  if (!(masked.mask > 0).any().item<bool>()) {
    throw invalid_input(where + ": the mask on image " + std::to_string(masked.image) +
                        " is empty (paint some pixels white)");
  }
  return masked;
}

template <typename T>
T field(const json& j, const char* name, const std::string& source) {
  if constexpr (std::is_integral_v<T>) {
    // nlohmann's get<int> truncates 1.5 to 1 without a word.
    if (j.at(name).is_number() && !j.at(name).is_number_integer()) {
      throw invalid_input(source + ": field '" + name + "' must be a whole number, got " +
                          j.at(name).dump().substr(0, 60));
    }
  }
  try {
    return j.at(name).get<T>();
  } catch (const json::exception&) {
    throw invalid_input(source + ": field '" + name + "' has the wrong type: " + j.at(name).dump().substr(0, 60));
  }
}

}  // namespace

Request Request::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw invalid_input(source + ": a request must be a JSON object");
  Request request;
  for (const auto& [name, value] : j.items()) {
    static const std::vector<std::string> kKnown = {"object", "paste", "key", "query", "mode", "model", "layer",
                                                    "rank", "solver", "steps", "lr", "piter", "sampling", "statistics"};
    if (std::find(kKnown.begin(), kKnown.end(), name) == kKnown.end()) request.unknown[name] = value;
  }
  if (j.contains("mode")) request.mode = field<std::string>(j, "mode", source);
  if (request.mode != "copy" && request.mode != "erase") {
    throw invalid_input(source + ": unknown mode '" + request.mode + "' (expected copy or erase)");
  }
  if (!j.contains("paste") || j["paste"].is_null()) throw invalid_input(source + ": missing 'paste' (where the rule applies)");
  request.paste = parse_masked_image(j["paste"], source + ": paste");
  if (j.contains("object") && !j["object"].is_null()) {
    request.object = parse_masked_image(j["object"], source + ": object");
  } else if (request.mode == "copy") {
    throw invalid_input(source + ": missing 'object' (the thing to copy); use \"mode\": \"erase\" to remove instead");
  }
  if (j.contains("key") && !j["key"].is_null()) {
    if (!j["key"].is_array()) throw invalid_input(source + ": 'key' must be a list of [image, mask] pairs");
    for (size_t i = 0; i < j["key"].size(); ++i) {
      request.keys.push_back(parse_masked_image(j["key"][i], source + ": key[" + std::to_string(i) + "]"));
    }
  }
  if (j.contains("query") && !j["query"].is_null()) request.query = parse_masked_image(j["query"], source + ": query");
  if (j.contains("model")) request.model = field<std::string>(j, "model", source);
  if (j.contains("layer") && !j["layer"].is_null()) request.layer = field<int>(j, "layer", source);
  if (j.contains("rank")) request.rank = field<int>(j, "rank", source);
  if (request.rank < 1 || request.rank > 64) {
    throw invalid_input(source + ": rank " + std::to_string(request.rank) + " out of range 1 to 64");
  }
  if (j.contains("solver")) request.solver.solver = field<std::string>(j, "solver", source);
  if (j.contains("steps")) request.solver.steps = field<int>(j, "steps", source);
  if (j.contains("lr")) request.solver.lr = field<double>(j, "lr", source);
  if (j.contains("piter")) request.solver.piter = field<int>(j, "piter", source);
  try {
    request.solver.validate();
  } catch (const Error& e) {
    throw invalid_input(source + ": " + e.what());
  }
  if (j.contains("sampling")) {
    try {
      request.sampling = SamplingSettings::from_json(j["sampling"]);
    } catch (const Error& e) {
      throw invalid_input(source + ": sampling: " + e.what());
    }
  }
  if (j.contains("statistics")) {
    const json& s = j["statistics"];
    if (!s.is_object()) throw invalid_input(source + ": 'statistics' must be an object");
    if (s.contains("samples")) request.statistics.samples = field<int64_t>(s, "samples", source + ": statistics");
    if (s.contains("batch_size")) request.statistics.batch_size = field<int64_t>(s, "batch_size", source + ": statistics");
    if (request.statistics.samples < 1 || request.statistics.samples > 1000000 || request.statistics.batch_size < 0) {
      throw invalid_input(source + ": statistics samples must be 1 to 1000000 and batch_size non-negative");
    }
  }
  return request;
}

json Request::to_json() const {
  json j = unknown;
  if (object) j["object"] = json::array({object->image, object->url});
  j["paste"] = json::array({paste.image, paste.url});
  json keys_json = json::array();
  for (const MaskedImage& key : keys) keys_json.push_back(json::array({key.image, key.url}));
  j["key"] = keys_json;
  if (query) j["query"] = json::array({query->image, query->url});
  j["mode"] = mode;
  if (!model.empty()) j["model"] = model;
  if (layer) j["layer"] = *layer;
  j["rank"] = rank;
  j["solver"] = solver.solver;
  j["steps"] = solver.steps;
  j["lr"] = solver.lr;
  j["piter"] = solver.piter;
  j["sampling"] = sampling.to_json();
  j["statistics"] = statistics.to_json();
  return j;
}

std::vector<MaskedImage> Request::context() const {
  if (!keys.empty()) return keys;
  return {paste};
}

Request load_request(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw not_found(path + ": cannot open the request file");
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().size() > 64u << 20) throw invalid_input(path + ": request file is larger than 64 MiB");
  json j;
  try {
    j = json::parse(text.str());
  } catch (const json::exception& e) {
    throw invalid_input(path + ": invalid JSON: " + e.what());
  }
  return Request::from_json(j, path);
}

void save_request(const std::string& path, const Request& request) {
  write_file_atomic(path, request.to_json().dump(1) + "\n");
}

}  // namespace rankone

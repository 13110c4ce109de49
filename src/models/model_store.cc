#include "rankone/models/model_store.h"

#include "rankone/error.h"
#include "rankone/models/generator.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace rankone {

namespace fs = std::filesystem;

namespace {

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
}

nlohmann::json read_card(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw not_found(path + ": cannot open the model card");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw invalid_input(path + ": invalid JSON in the model card: " + e.what());
  }
}

std::string file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw not_found(path + ": cannot open the file");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  std::string data = bytes.str();
  return sha256_hex(data.data(), data.size());
}

// Quotes a path for /bin/sh.
std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string models_dir() {
  std::string dir = env_or_empty("RANKONE_MODELS");
  if (!dir.empty()) return dir;
  std::string cache = env_or_empty("XDG_CACHE_HOME");
  if (cache.empty()) {
    std::string home = env_or_empty("HOME");
    cache = (home.empty() ? fs::temp_directory_path().string() : home + "/.cache");
  }
  return cache + "/rankone/models";
}

std::string cards_dir() {
  std::string dir = env_or_empty("RANKONE_CARDS");
  if (!dir.empty()) return dir;
  return std::string(RANKONE_SOURCE_DIR) + "/models/cards";
}

std::vector<std::string> bundled_models() {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(cards_dir(), error)) {
    if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string resolve_model_path(const std::string& model) {
  if (fs::is_regular_file(model)) return model;
  fs::path card = fs::path(cards_dir()) / (model + ".json");
  if (model.find('/') == std::string::npos && fs::is_regular_file(card)) return card.string();
  std::string choices;
  for (const std::string& name : bundled_models()) choices += (choices.empty() ? "" : ", ") + name;
  throw not_found("model '" + model + "' not found: give a model card (.json), a checkpoint (.pt, .safetensors) " +
                  "or a bundled model name (" + (choices.empty() ? "none found in " + cards_dir() : choices) + ")");
}

std::string resolve_card_file(const std::string& card_path, const std::string& file) {
  fs::path beside = fs::path(card_path).parent_path() / file;
  if (fs::is_regular_file(beside)) return beside.string();
  std::string name = fs::path(card_path).stem().string();
  nlohmann::json card = read_card(card_path);
  if (card.contains("name") && card["name"].is_string()) name = card["name"].get<std::string>();
  fs::path fetched = fs::path(models_dir()) / name / file;
  if (fs::is_regular_file(fetched)) return fetched.string();
  throw not_found(card_path + ": weights file '" + file + "' not found beside the card or in " +
                  (fs::path(models_dir()) / name).string() + ": run `rankone fetch " + name + "` first");
}

void fetch_model(const std::string& name, const std::string& local_dir,
                 const std::function<void(const std::string&)>& log) {
  std::string card_path = resolve_model_path(name);
  nlohmann::json card = read_card(card_path);
  std::string model_name = card.value("name", name);
  if (!card.contains("files") || !card["files"].is_array()) {
    throw invalid_input(card_path + ": the card has no 'files' list to fetch");
  }
  fs::path target_dir = fs::path(models_dir()) / model_name;
  fs::create_directories(target_dir);

  for (const auto& entry : card["files"]) {
    std::string file = entry.at("file").get<std::string>();
    std::string expected = entry.at("sha256").get<std::string>();
    fs::path target = target_dir / file;
    if (fs::is_regular_file(target) && file_sha256(target.string()) == expected) {
      log(file + ": already present, sha256 verified (" + target.string() + ")");
      continue;
    }

    fs::path partial = target;
    partial += ".partial";
    fs::path local = local_dir.empty() ? fs::path() : fs::path(local_dir) / model_name / file;
    if (!local.empty() && fs::is_regular_file(local)) {
      log(file + ": copying from " + local.string());
      fs::copy_file(local, partial, fs::copy_options::overwrite_existing);
    } else {
      std::string url = entry.value("url", "");
      if (url.empty()) throw invalid_input(card_path + ": no URL for '" + file + "' and no local copy");
      log(file + ": downloading " + url);
      std::string command = "curl --fail --location --silent --show-error --output " +
                            shell_quote(partial.string()) + " " + shell_quote(url);
      if (std::system(command.c_str()) != 0) {
        fs::remove(partial);
        throw Error(ErrorKind::kInternal, "download of " + url + " failed (is curl installed and the network up? "
                                          "Or set RANKONE_LOCAL_MODELS to a folder that has " + model_name + "/" + file + ")");
      }
    }

    std::string actual = file_sha256(partial.string());
    if (actual != expected) {
      fs::remove(partial);
      throw invalid_input(file + ": sha256 mismatch (expected " + expected + ", got " + actual +
                          "): the file is corrupt or not the published one; nothing was installed");
    }
    fs::rename(partial, target);
    log(file + ": sha256 verified, installed to " + target.string());
  }
}

}  // namespace rankone

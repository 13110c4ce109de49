// Where models live: bundled model cards in the source tree, fetched weights
// in a per-user folder, and the fetch step that copies or downloads them and
// checks their sha256.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace rankone {

/// Folder of fetched weights: $RANKONE_MODELS, else $XDG_CACHE_HOME/rankone/models,
/// else ~/.cache/rankone/models. Each model has a subfolder named after it.
std::string models_dir();

/// Folder of the bundled model cards: $RANKONE_CARDS, else models/cards in the source tree.
std::string cards_dir();

/// Names of the bundled model cards (file names without .json).
std::vector<std::string> bundled_models();

/// Turns a --model value into a file path: an existing file is used as it is; a bare
/// name is looked up among the bundled cards. Throws a not-found Error listing the choices.
std::string resolve_model_path(const std::string& model);

/// Path of a file a card lists (e.g. "generator.pt"): beside the card if present there,
/// else in models_dir()/<card name>/. Throws a not-found Error saying to run `rankone fetch`.
std::string resolve_card_file(const std::string& card_path, const std::string& file);

/// Obtains every file the bundled card `name` lists into models_dir()/<name>/: copied from
/// `local_dir`/<name>/ when that folder has it, else downloaded from the card's URL with curl.
/// The sha256 of each file is checked before it is moved into place; a file already present
/// with the right checksum is kept. `log` receives one line per step.
void fetch_model(const std::string& name, const std::string& local_dir,
                 const std::function<void(const std::string&)>& log);

}  // namespace rankone

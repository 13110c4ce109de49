#include "serving/studio_session.h"

#include "rankone/error.h"
#include "rankone/formats/image.h"
#include "rankone/rewriting/masks.h"
#include "rankone/rewriting/rewriter.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <filesystem>
#include <mutex>

namespace rankone::serving {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Samples per forward pass when scoring many samples (results do not depend on it).
constexpr int64_t kChunk = 50;
// Maximum image pixels in one context-matches response (about 200 MB of RGB before PNG).
constexpr int64_t kMaxHeatmapPixels = int64_t{64} << 20;

MaskedImage parse_masked_image(const json& entry, const std::string& where) {
  if (!entry.is_array() || entry.size() != 2 || !entry[0].is_number_integer() || !entry[1].is_string()) {
    throw invalid_input(where + " must be [image number, \"data:image/png;base64,...\"]");
  }
  MaskedImage masked;
  masked.image = entry[0].get<int64_t>();
  masked.url = entry[1].get<std::string>();
  masked.mask = decode_mask_url(masked.url, where);
  if (!(masked.mask > 0).any().item<bool>()) {
    throw invalid_input(where + ": the mask on image " + std::to_string(masked.image) + " is empty: paint some pixels");
  }
  return masked;
}

// Ties the `editing_` flag to the lifetime of one edit, also when it throws.
class EditingFlag {
 public:
  EditingFlag(std::mutex& mutex, bool& flag) : mutex_(mutex), flag_(flag) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (flag_) throw Error(ErrorKind::kConflict, "another edit is running");
    flag_ = true;
  }
  ~EditingFlag() {
    std::lock_guard<std::mutex> lock(mutex_);
    flag_ = false;
  }

 private:
  std::mutex& mutex_;
  bool& flag_;
};

}  // namespace

StudioSession::StudioSession(const std::string& model, const StudioOptions& options)
    : options_(options),
      model_name_(model),
      original_(load_generator(model)),
      edited_(load_generator(model)),
      stack_(*edited_) {
  statistics_ = std::make_unique<StatisticsStore>(*original_, options_.sampling, options_.statistics,
                                                  options_.cache_dir);
  fs::create_directories(fs::path(options_.data_dir) / "patches");
}

json StudioSession::model_info() const {
  const Generator& g = *original_;
  json layers = json::array();
  for (const LayerInfo& info : g.layers()) {
    layers.push_back({{"index", info.index},
                      {"name", info.name},
                      {"key_channels", info.key_channels},
                      {"key_size", info.key_size},
                      {"value_channels", info.value_channels},
                      {"value_size", info.value_size},
                      {"kernel_size", info.kernel_size},
                      {"statistics_ready", statistics_->ready(info.index)}});
  }
  json info = {{"model", model_name_},
               {"source", g.source()},
               {"architecture", g.architecture()},
               {"image_size", g.image_size()},
               {"latent_size", g.latent_size()},
               {"parameters", g.parameter_count()},
               {"default_layer", g.default_layer()},
               {"layers", layers},
               {"sampling", options_.sampling.to_json()},
               {"statistics", options_.statistics.to_json()},
               {"sample_count", options_.sample_count},
               {"max_search_samples", options_.max_search_samples},
               // Pixels per model pixel that make an image about 200 pixels wide for painting.
               {"display_scale", std::max<int64_t>(1, 200 / g.image_size())}};
  std::shared_lock<std::shared_mutex> lock(mutex_);
  info.update(stack_info_locked());
  return info;
}

json StudioSession::stack_info() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return stack_info_locked();
}

json StudioSession::stack_info_locked() const { return {{"revision", revision_}, {"applied", applied_}}; }

void StudioSession::check_sample(int64_t index) const {
  if (index < 0 || index >= options_.sample_count) {
    throw not_found("sample " + std::to_string(index) + " not found: this server draws samples 0 to " +
                    std::to_string(options_.sample_count - 1));
  }
}

void StudioSession::check_scale(int scale) const {
  if (scale < 1 || original_->image_size() * scale > 4096) {
    throw invalid_input("scale " + std::to_string(scale) + " is out of range: images are " +
                        std::to_string(original_->image_size()) + " pixels and may be enlarged to at most 4096");
  }
}

std::string StudioSession::render_sample(int64_t index, bool edited, int scale) const {
  check_sample(index);
  check_scale(scale);
  torch::NoGradGuard no_grad;
  at::Tensor image = generate_sample(index, edited);
  return encode_png(upscale(tensor_to_image(image[0]), scale));
}

at::Tensor StudioSession::generate_sample(int64_t index, bool edited) const {
  SampleBatch batch = original_->latents({index}, options_.sampling);
  if (!edited) return original_->generate(batch, options_.sampling);
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return edited_->generate(batch, options_.sampling);
}

ContextQuery StudioSession::parse_context_query(const json& body) const {
  if (!body.is_object()) throw invalid_input("the body must be a JSON object");
  ContextQuery query;
  if (!body.contains("key") || !body["key"].is_array() || body["key"].empty()) {
    throw invalid_input("'key' must list at least one [image number, mask URL] pair: add context first");
  }
  for (size_t i = 0; i < body["key"].size(); ++i) {
    MaskedImage masked = parse_masked_image(body["key"][i], "key[" + std::to_string(i) + "]");
    check_sample(masked.image);
    query.keys.push_back(std::move(masked));
  }
  query.layer = original_->default_layer();
  if (body.contains("layer") && !body["layer"].is_null()) {
    if (!body["layer"].is_number_integer()) throw invalid_input("'layer' must be an integer");
    query.layer = body["layer"].get<int>();
  }
  const LayerInfo& info = original_->layer(query.layer);
  if (body.contains("rank")) {
    if (!body["rank"].is_number_integer()) throw invalid_input("'rank' must be an integer");
    query.rank = body["rank"].get<int>();
  }
  if (query.rank < 1 || query.rank > info.key_channels) {
    throw invalid_input("rank " + std::to_string(query.rank) + " is out of range 1 to " +
                        std::to_string(info.key_channels) + " for layer " + std::to_string(query.layer));
  }
  return query;
}

std::pair<torch::Tensor, double> StudioSession::context_direction(const ContextQuery& query) {
  torch::NoGradGuard no_grad;
  SecondMoment moment = statistics_->get(query.layer);

  Request request;
  request.keys = query.keys;
  request.paste = query.keys.front();
  request.sampling = options_.sampling;
  at::Tensor keys, weights;
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    std::tie(keys, weights) = context_keys(*edited_, query.layer, request);
  }
  at::Tensor d = context_directions(keys, weights, zca_matrix(moment.c), query.rank);  // [r, C_in]

  // Heat 1 is the mean response of the painted keys, weighted by the mask, so that most of a
  // region like the painted one lights up fully.
  at::Tensor painted = at::matmul(keys, d.t()).relu().norm(2, {1});  // [N]
  double normaliser = ((painted * weights).sum() / weights.sum()).item<double>();
  return {d, std::max(normaliser, 1e-12)};
}

torch::Tensor StudioSession::context_response(const ContextQuery& query, const torch::Tensor& d, double normaliser,
                                              const std::vector<int64_t>& samples) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  for (size_t start = 0; start < samples.size(); start += kChunk) {
    std::vector<int64_t> chunk(samples.begin() + start, samples.begin() + std::min(samples.size(), start + kChunk));
    SampleBatch batch = original_->latents(chunk, options_.sampling);
    at::Tensor key;
    {
      std::shared_lock<std::shared_mutex> lock(mutex_);
      key = edited_->run_context_key(query.layer, batch, options_.sampling);
    }
    at::Tensor response = at::einsum("bchw,rc->brhw", {key, d}).relu().norm(2, {1});  // [B, H, W]
    parts.push_back(response / normaliser);
  }
  return at::cat(parts, 0);
}

std::vector<std::string> StudioSession::context_heatmaps(const ContextQuery& query,
                                                         const std::vector<int64_t>& samples, int scale,
                                                         bool edited) {
  check_scale(scale);
  for (int64_t index : samples) check_sample(index);
  int64_t side = original_->image_size() * scale;
  if (static_cast<int64_t>(samples.size()) * side * side > kMaxHeatmapPixels) {
    throw invalid_input("context matches: " + std::to_string(samples.size()) + " images of " + std::to_string(side) +
                        "x" + std::to_string(side) + " pixels are too many: ask for fewer samples or a smaller scale");
  }
  auto [d, normaliser] = context_direction(query);
  at::Tensor heat = context_response(query, d, normaliser, samples).clamp(0, 1);

  torch::NoGradGuard no_grad;
  at::Tensor resized = at::upsample_bilinear2d(heat.unsqueeze(1), {side, side}, /*align_corners=*/false);
  resized = resized.squeeze(1).clamp(0, 1);
  std::vector<std::string> pngs;
  for (size_t i = 0; i < samples.size(); ++i) {
    at::Tensor image = generate_sample(samples[i], edited);
    Image picture = upscale(tensor_to_image(image[0]), scale);
    overlay_heatmap(picture, resized[static_cast<int64_t>(i)]);
    pngs.push_back(encode_png(picture));
  }
  return pngs;
}

json StudioSession::search(const ContextQuery& query, const std::vector<int64_t>& samples, int top) {
  if (samples.empty()) throw invalid_input("search: no samples to search");
  if (static_cast<int64_t>(samples.size()) > options_.max_search_samples) {
    throw invalid_input("search: " + std::to_string(samples.size()) + " samples is more than the limit of " +
                        std::to_string(options_.max_search_samples) + ": search a smaller range");
  }
  for (int64_t index : samples) check_sample(index);
  if (top < 1) throw invalid_input("search: 'top' must be at least 1");

  auto [d, normaliser] = context_direction(query);
  at::Tensor scores = context_response(query, d, normaliser, samples).flatten(1).amax(1);  // [N]
  int64_t count = std::min<int64_t>(top, scores.size(0));
  at::Tensor order = std::get<1>(scores.topk(count));
  json results = json::array();
  for (int64_t i = 0; i < count; ++i) {
    int64_t position = order[i].item<int64_t>();
    results.push_back({{"index", samples[position]}, {"score", scores[position].item<double>()}});
  }
  return results;
}

Request StudioSession::prepare_request(const json& body) const {
  Request request = Request::from_json(body, "request");
  if (body.contains("sampling")) {
    SamplingSettings posted = SamplingSettings::from_json(body["sampling"]);
    if (posted.to_json() != options_.sampling.to_json()) {
      throw invalid_input("request: its sampling settings " + posted.to_json().dump() + " differ from this server's " +
                          options_.sampling.to_json().dump() +
                          ": restart the server with matching --latent-stream, --noise and --truncation");
    }
  }
  request.sampling = options_.sampling;
  request.statistics = options_.statistics;
  request.model = model_name_;

  if (request.object) check_sample(request.object->image);
  check_sample(request.paste.image);
  for (const MaskedImage& key : request.keys) check_sample(key.image);
  if (request.query) check_sample(request.query->image);

  request.layer = request_layer(*original_, request);
  const LayerInfo& info = original_->layer(*request.layer);
  if (request.rank > info.key_channels) {
    throw invalid_input("request: rank " + std::to_string(request.rank) + " is larger than layer " +
                        std::to_string(info.index) + "'s key size " + std::to_string(info.key_channels));
  }
  return request;
}

json StudioSession::run_edit(const Request& request, const std::string& id, const ProgressCallback& progress) {
  EditingFlag editing(editing_mutex_, editing_);
  int layer = *request.layer;

  // Statistics come from the original model. The solve starts from the current weights, so
  // edits stack.
  SecondMoment moment = statistics_->get(layer, progress);
  EditResult result;
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    result = rewrite(*edited_, request, moment, progress);
  }

  at::Tensor base_weight;
  {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    base_weight = stack_.base_weight(layer);  // exclusive because the first call records the weight
  }
  Patch patch = make_patch(*original_, result, request.to_json(), base_weight);
  std::string patch_path = (fs::path(options_.data_dir) / "patches" / (id + ".safetensors")).string();
  save_patch(patch_path, patch);

  json summary = result.summary();
  summary["id"] = id;
  summary["statistics_seconds"] = moment.seconds;
  summary["patch"] = patch_path;
  std::unique_lock<std::shared_mutex> lock(mutex_);
  stack_.apply(patch);
  applied_.push_back(summary);
  ++revision_;
  summary["revision"] = revision_;
  spdlog::info("edit {} applied to layer {}: goal loss {:.5f} -> {:.5f}, patch {}", id, result.layer,
               result.goal_loss_initial, result.goal_loss_final, patch_path);
  return summary;
}

json StudioSession::undo() {
  // Holding editing_mutex_ keeps an edit from starting until the weights are restored.
  std::lock_guard<std::mutex> editing_lock(editing_mutex_);
  if (editing_) throw Error(ErrorKind::kConflict, "an edit is running: wait for it or cancel it before undoing");
  // Exclusive, because image requests read the weights and the stack under the shared lock.
  std::unique_lock<std::shared_mutex> lock(mutex_);
  bool undone = stack_.revert_last();
  if (undone) {
    applied_.pop_back();
    ++revision_;
  }
  json info = stack_info_locked();
  info["undone"] = undone;
  return info;
}

json StudioSession::revert() {
  std::lock_guard<std::mutex> editing_lock(editing_mutex_);
  if (editing_) throw Error(ErrorKind::kConflict, "an edit is running: wait for it or cancel it before reverting");
  std::unique_lock<std::shared_mutex> lock(mutex_);
  bool changed = stack_.size() > 0;
  stack_.revert_all();
  applied_.clear();
  if (changed) ++revision_;
  json info = stack_info_locked();
  info["reverted"] = changed;
  return info;
}

std::string StudioSession::last_patch_path() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  if (applied_.empty()) return "";
  return applied_.back().at("patch").get<std::string>();
}

}  // namespace rankone::serving

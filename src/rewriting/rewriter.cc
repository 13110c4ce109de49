#include "rankone/rewriting/rewriter.h"

#include "rankone/error.h"
#include "rankone/rewriting/masks.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

namespace rankone {

namespace {

// Value map and layer state of one sample, run alone (batch 1) as the reference does.
std::pair<LayerState, at::Tensor> layer_output(const Generator& generator, int layer, int64_t image,
                                               const SamplingSettings& sampling) {
  LayerState state = generator.run_context(layer, generator.latents({image}, sampling), sampling);
  at::Tensor value = generator.run_target(layer, state, generator.weight(layer));
  return {state, value};
}

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

}  // namespace

nlohmann::json EditResult::summary() const {
  return {{"layer", layer},
          {"rank", rank},
          {"solver", solver},
          {"steps", steps},
          {"seconds", seconds},
          {"goal_loss_initial", goal_loss_initial},
          {"goal_loss_final", goal_loss_final}};
}

int request_layer(const Generator& generator, const Request& request) {
  int layer = request.layer ? *request.layer : generator.default_layer();
  generator.layer(layer);  // throws for an unknown layer
  return layer;
}

torch::Tensor layer_mask(const MaskedImage& masked, int64_t size) { return resize_mask(masked.mask, size, size); }

Goal build_goal(const Generator& generator, int layer, const Request& request) {
  torch::NoGradGuard no_grad;
  const LayerInfo& info = generator.layer(layer);
  if (!request.object) throw invalid_input("a copy request needs an 'object'");
  const int64_t size = info.value_size;
  const int64_t stride = info.stride();

  // Object: its bounding box and alpha at value resolution.
  at::Tensor object_area = layer_mask(*request.object, size);
  Box object_box = mask_bounds(object_area);
  if (object_box.empty()) {
    throw invalid_input("the object mask on image " + std::to_string(request.object->image) + " covers no pixel at " +
                        std::to_string(size) + "x" + std::to_string(size) + " (layer " + std::to_string(layer) +
                        "): paint a larger region");
  }
  at::Tensor object_values = layer_output(generator, layer, request.object->image, request.sampling).second;
  at::Tensor object_crop = object_values.slice(2, object_box.top, object_box.bottom)
                               .slice(3, object_box.left, object_box.right);
  at::Tensor alpha = object_area.slice(0, object_box.top, object_box.bottom)
                         .slice(1, object_box.left, object_box.right);

  // Paste: the object's box centred on the paste mask's box, clamped to the map.
  at::Tensor paste_area = layer_mask(request.paste, size);
  Box paste_mask_box = mask_bounds(paste_area);
  if (paste_mask_box.empty()) {
    throw invalid_input("the paste mask on image " + std::to_string(request.paste.image) + " covers no pixel at " +
                        std::to_string(size) + "x" + std::to_string(size) + ": paint a larger region");
  }
  int64_t h = object_box.height(), w = object_box.width();
  int64_t center_y = (paste_mask_box.top + paste_mask_box.bottom) / 2;
  int64_t center_x = (paste_mask_box.left + paste_mask_box.right) / 2;
  Box pasted;
  pasted.top = std::max<int64_t>(0, std::min<int64_t>(size - h, center_y - h / 2));
  pasted.left = std::max<int64_t>(0, std::min<int64_t>(size - w, center_x - w / 2));
  pasted.bottom = pasted.top + h;
  pasted.right = pasted.left + w;

  auto [paste_state, paste_values] = layer_output(generator, layer, request.paste.image, request.sampling);
  at::Tensor composite = paste_values.clone();
  at::Tensor region = composite.slice(2, pasted.top, pasted.bottom).slice(3, pasted.left, pasted.right);
  region.copy_((1 - alpha) * region + alpha * object_crop);

  // Tight crop; with a stride the key box is rounded outward and the value box widened to match.
  Goal goal;
  goal.object_box = object_box;
  goal.key_box = {floor_div(pasted.top, stride), floor_div(pasted.left, stride), ceil_div(pasted.bottom, stride),
                  ceil_div(pasted.right, stride)};
  goal.value_box = {goal.key_box.top * stride, goal.key_box.left * stride, goal.key_box.bottom * stride,
                    goal.key_box.right * stride};
  goal.inputs = generator.crop(layer, paste_state, goal.key_box, request.sampling);
  goal.values = composite.slice(2, goal.value_box.top, goal.value_box.bottom)
                    .slice(3, goal.value_box.left, goal.value_box.right)
                    .contiguous();
  goal.composite = composite;
  return goal;
}

std::pair<torch::Tensor, torch::Tensor> context_keys(const Generator& generator, int layer, const Request& request) {
  torch::NoGradGuard no_grad;
  const LayerInfo& info = generator.layer(layer);
  std::vector<at::Tensor> rows, weights;
  for (const MaskedImage& masked : request.context()) {
    at::Tensor mask = layer_mask(masked, info.key_size).reshape({-1});
    at::Tensor key = generator.run_context_key(layer, generator.latents({masked.image}, request.sampling),
                                               request.sampling);
    at::Tensor obs = key[0].reshape({info.key_channels, -1}).t();  // [H*W, C], row-major positions
    at::Tensor selected = mask > 0;
    rows.push_back(obs.index({selected}));
    weights.push_back(mask.index({selected}));
  }
  at::Tensor keys = at::cat(rows, 0), mask_weights = at::cat(weights, 0);
  if (keys.size(0) == 0) {
    throw invalid_input("the context masks cover no pixel at the layer's " + std::to_string(info.key_size) + "x" +
                        std::to_string(info.key_size) + " key resolution: paint larger regions");
  }
  return {keys.contiguous(), mask_weights.contiguous()};
}

torch::Tensor zca_matrix(const torch::Tensor& c) {
  auto [eigenvalues, eigenvectors] = at::linalg_eigh(c.to(at::kDouble), "U");
  double floor = std::max(eigenvalues.max().item<double>() * 1e-12, 1e-40);
  at::Tensor inverse_root = 1.0 / eigenvalues.clamp_min(floor).sqrt();
  return at::matmul(eigenvectors * inverse_root.unsqueeze(0), eigenvectors.t());
}

torch::Tensor context_directions(const torch::Tensor& keys, const torch::Tensor& weights, const torch::Tensor& zca,
                                 int rank) {
  int64_t channels = keys.size(1);
  if (rank > channels) {
    throw invalid_input("rank " + std::to_string(rank) + " is larger than the key size " + std::to_string(channels));
  }
  at::Tensor z = zca.to(at::kDouble);
  at::Tensor whitened = weights.to(at::kDouble).unsqueeze(1) * at::matmul(keys.to(at::kDouble), z.t());
  auto svd = at::linalg_svd(whitened, /*full_matrices=*/false);
  at::Tensor vh = std::get<2>(svd);                      // [min(N, C), C]
  if (vh.size(0) < rank) {
    throw invalid_input("rank " + std::to_string(rank) + " needs at least as many context key pixels, but only " +
                        std::to_string(vh.size(0)) + " are painted at this layer");
  }
  at::Tensor row_directions = at::matmul(z, vh.slice(0, 0, rank).t());  // [C, r]
  at::Tensor q = std::get<0>(at::linalg_qr(row_directions, "reduced"));  // [C, r]
  at::Tensor d = q.t().contiguous();                                     // [r, C]
  at::Tensor signs = at::sign(at::matmul(d, whitened.sum(0)));
  signs = at::where(signs == 0, at::ones_like(signs), signs);
  return (d * signs.unsqueeze(1)).to(at::kFloat).contiguous();
}

torch::Tensor erase_directions(const torch::Tensor& keys, const torch::Tensor& weights, const torch::Tensor& c,
                               int rank) {
  int64_t channels = keys.size(1);
  if (rank > channels) {
    throw invalid_input("rank " + std::to_string(rank) + " is larger than the key size " + std::to_string(channels));
  }
  at::Tensor weighted = keys.to(at::kDouble) * weights.to(at::kDouble).unsqueeze(1);
  at::Tensor energy = weighted.pow(2).mean(0) / c.to(at::kDouble).diagonal().clamp_min(1e-12);
  at::Tensor units = std::get<1>(energy.topk(rank));
  at::Tensor d = at::zeros({rank, channels}, at::kFloat);
  for (int i = 0; i < rank; ++i) d[i][units[i].item<int64_t>()] = 1.0f;
  return d;
}

Goal build_erase_goal(const Generator& generator, int layer, const Request& request, const torch::Tensor& d) {
  torch::NoGradGuard no_grad;
  const LayerInfo& info = generator.layer(layer);
  at::Tensor paste_area = layer_mask(request.paste, info.key_size);
  Box key_box = mask_bounds(paste_area);
  if (key_box.empty()) {
    throw invalid_input("the paste mask on image " + std::to_string(request.paste.image) +
                        " covers no pixel at the layer's key resolution: paint a larger region");
  }
  LayerState state = generator.run_context(layer, generator.latents({request.paste.image}, request.sampling),
                                           request.sampling);
  Goal goal;
  goal.key_box = key_box;
  int64_t stride = info.stride();
  goal.value_box = {key_box.top * stride, key_box.left * stride, key_box.bottom * stride, key_box.right * stride};
  goal.inputs = generator.crop(layer, state, key_box, request.sampling);

  // Zero the chosen units of the key inside the crop and take what the layer makes of it.
  LayerState silenced = goal.inputs;
  at::Tensor keep = 1 - d.sum(0).clamp(0, 1);  // [C_in], 0 for erased units
  silenced.key = goal.inputs.key * keep.view({1, -1, 1, 1});
  goal.values = generator.run_target(layer, silenced, generator.weight(layer)).contiguous();
  goal.composite = generator.run_target(layer, state, generator.weight(layer));
  return goal;
}

double goal_loss(const Generator& generator, int layer, const Goal& goal, const torch::Tensor& weight) {
  torch::NoGradGuard no_grad;
  return (generator.run_target(layer, goal.inputs, weight) - goal.values).abs().mean().item<double>();
}

torch::Tensor lambda_of(const torch::Tensor& delta, const torch::Tensor& d) {
  return at::einsum("oiyx,ri->oryx", {delta, d});
}

torch::Tensor delta_of(const torch::Tensor& lambda, const torch::Tensor& d) {
  return at::einsum("oryx,ri->oiyx", {lambda, d});
}

torch::Tensor project_on_directions(const torch::Tensor& delta, const torch::Tensor& d) {
  return delta_of(lambda_of(delta, d), d);
}

EditResult rewrite(const Generator& generator, const Request& request, const SecondMoment& statistics,
                   const ProgressCallback& progress) {
  int layer = request_layer(generator, request);
  const LayerInfo& info = generator.layer(layer);
  if (request.rank > info.key_channels) {
    throw invalid_input("rank " + std::to_string(request.rank) + " is larger than layer " + std::to_string(layer) +
                        "'s key size " + std::to_string(info.key_channels));
  }
  auto [keys, weights] = context_keys(generator, layer, request);

  at::Tensor d;
  Goal goal;
  if (request.mode == "erase") {
    d = erase_directions(keys, weights, statistics.c, request.rank);
    goal = build_erase_goal(generator, layer, request, d);
  } else {
    d = context_directions(keys, weights, zca_matrix(statistics.c), request.rank);
    goal = build_goal(generator, layer, request);
  }
  return solve_edit(generator, layer, goal, d, request.solver, progress);
}

}  // namespace rankone

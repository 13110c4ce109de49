#include "rewriting/evaluation_report.h"

#include "rankone/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

namespace rankone::evaluation {

namespace {

using nlohmann::json;

// Histogram geometry in pixels: the plot area spans [kLeft, kWidth - kRight] x [kTop, kAxisY].
constexpr int kWidth = 600, kHeight = 240;
constexpr int kLeft = 12, kRight = 12, kTop = 10, kAxisY = 222, kTickLength = 7;
constexpr uint8_t kAxisColor[3] = {40, 40, 40};
constexpr uint8_t kGridColor[3] = {225, 225, 225};
constexpr uint8_t kMarkerColor[3] = {214, 39, 40};

void fill_rect(Image& image, int left, int top, int right, int bottom, const uint8_t rgb[3]) {
  for (int y = std::max(0, top); y < std::min(image.height, bottom); ++y) {
    for (int x = std::max(0, left); x < std::min(image.width, right); ++x) std::copy_n(rgb, 3, image.at(x, y));
  }
}

std::string number_text(double value) {
  std::ostringstream out;
  out.precision(3);
  out << value;
  return out.str();
}

std::string html_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// Scales a map [H, W] to the upscaled tile size with nearest-neighbour sampling.
at::Tensor upscale_map(const at::Tensor& map, int factor) {
  return map.repeat_interleave(factor, 0).repeat_interleave(factor, 1);
}

// The smallest multiple of a 1, 2, 2.5 or 5 times a power of ten step that reaches `value` in
// four steps, so that the five x ticks get short labels.
double nice_upper_bound(double value) {
  double raw_step = value / 4;
  double power = std::pow(10.0, std::floor(std::log10(raw_step)));
  for (double factor : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (factor * power >= raw_step) return 4 * factor * power;
  }
  return 40 * power;
}

std::vector<double> values_of(const at::Tensor& tensor) {
  at::Tensor values = tensor.to(at::kDouble).contiguous();
  return std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
}

}  // namespace

HistogramFigure draw_histogram(const std::vector<std::vector<double>>& series, double low, double high, int bins,
                               const std::vector<std::array<uint8_t, 3>>& colors, double marker) {
  if (series.empty() || colors.size() < series.size() || bins < 1 || !(high > low)) {
    throw Error(ErrorKind::kInternal, "draw_histogram: needs a color per series, bins >= 1 and high > low");
  }

  // counts, with the y axis running to a multiple of 4 so that its quarter ticks are whole numbers
  std::vector<std::vector<int64_t>> counts(series.size(), std::vector<int64_t>(bins, 0));
  int64_t tallest = 1;
  for (size_t s = 0; s < series.size(); ++s) {
    for (double value : series[s]) {
      if (!std::isfinite(value)) continue;
      int bin = static_cast<int>(std::floor((value - low) / (high - low) * bins));
      bin = std::clamp(bin, 0, bins - 1);
      tallest = std::max(tallest, ++counts[s][bin]);
    }
  }

  const int64_t top_count = (tallest + 3) / 4 * 4;

  // grid lines, bars, axes and ticks
  HistogramFigure figure;
  figure.image = Image(kWidth, kHeight, 3, 255);
  Image& image = figure.image;
  const int plot_width = kWidth - kLeft - kRight, plot_height = kAxisY - kTop;
  for (int quarter = 1; quarter <= 4; ++quarter) {
    int y = kAxisY - plot_height * quarter / 4;
    fill_rect(image, kLeft, y, kWidth - kRight, y + 1, kGridColor);
    figure.y_ticks.emplace_back(y, std::to_string(top_count * quarter / 4));
  }
  figure.y_ticks.emplace_back(kAxisY, "0");
  const double bin_width = static_cast<double>(plot_width) / bins;
  const double bar_width = bin_width / series.size();
  for (size_t s = 0; s < series.size(); ++s) {
    for (int bin = 0; bin < bins; ++bin) {
      int left = kLeft + static_cast<int>(std::lround(bin * bin_width + s * bar_width));
      int right = kLeft + static_cast<int>(std::lround(bin * bin_width + (s + 1) * bar_width)) - 1;
      int top = kAxisY - static_cast<int>(std::lround(static_cast<double>(counts[s][bin]) / top_count * plot_height));
      fill_rect(image, left, top, std::max(left + 1, right), kAxisY, colors[s].data());
    }
  }
  fill_rect(image, kLeft, kAxisY, kWidth - kRight, kAxisY + 2, kAxisColor);
  fill_rect(image, kLeft - 2, kTop, kLeft, kAxisY + 2, kAxisColor);
  for (int tick = 0; tick <= 4; ++tick) {
    int x = kLeft + plot_width * tick / 4;
    fill_rect(image, x - 1, kAxisY + 2, x + 1, kAxisY + 2 + kTickLength, kAxisColor);
    figure.x_ticks.emplace_back(x, number_text(low + (high - low) * tick / 4));
  }
  if (marker >= low && marker <= high) {
    int x = kLeft + static_cast<int>(std::lround((marker - low) / (high - low) * plot_width));
    for (int y = kTop; y < kAxisY; y += 8) fill_rect(image, x - 1, y, x + 1, std::min(y + 5, kAxisY), kMarkerColor);
  }
  return figure;
}

Image draw_sample_grid(const ComparedSamples& samples, double threshold) {
  const int64_t count = static_cast<int64_t>(samples.indices.size());
  const int64_t size = samples.before.size(3);
  const int scale = size >= 128 ? 1 : static_cast<int>((128 + size - 1) / size);
  const uint8_t outline[3] = {0, 230, 0};
  std::vector<Image> tiles;
  for (int row = 0; row < 4; ++row) {
    for (int64_t i = 0; i < count; ++i) {
      Image tile = upscale(tensor_to_image(row == 0 || row == 3 ? samples.before[i] : samples.after[i]), scale);
      if (row == 2) {
        // A change of 0.5 (a quarter of the [-1, 1] range) or more is drawn at full strength.
        overlay_heatmap(tile, upscale_map((samples.change[i] / 0.5).clamp(0, 1), scale), 0.8f);
      } else if (row == 3) {
        // Twice the threshold is drawn at full strength, so the heatmap still varies inside the region.
        at::Tensor response = upscale_map(samples.response[i], scale);
        overlay_heatmap(tile, (response / (2 * threshold)).clamp(0, 1), 0.8f);
        draw_mask_outline(tile, response >= threshold, outline);
      }
      tiles.push_back(std::move(tile));
    }
  }
  return make_grid(tiles, static_cast<int>(count), 2);
}

namespace {

// The figure as an <img> with its tick labels placed under and beside it.
std::string histogram_html(const HistogramFigure& figure, const std::string& file, const std::string& alt,
                           const std::string& x_label, const std::string& y_label) {
  std::ostringstream out;
  out << "<div class=\"plot\"><div class=\"ylabel\">" << html_escape(y_label) << "</div>"
      << "<div class=\"frame\" style=\"width:" << figure.image.width << "px;height:" << figure.image.height + 22
      << "px\"><img src=\"" << file << "\" alt=\"" << html_escape(alt) << "\" width=\"" << figure.image.width
      << "\" height=\"" << figure.image.height << "\">";
  for (const auto& [x, label] : figure.x_ticks) {
    out << "<span class=\"xtick\" style=\"left:" << x << "px;top:" << figure.image.height << "px\">"
        << html_escape(label) << "</span>";
  }
  for (const auto& [y, label] : figure.y_ticks) {
    out << "<span class=\"ytick\" style=\"top:" << y << "px\">" << html_escape(label) << "</span>";
  }
  out << "</div><div class=\"xlabel\">" << html_escape(x_label) << "</div></div>\n";
  return out.str();
}

std::string format_value(const json& value, int digits = 4) {
  if (value.is_null()) return "n/a";
  if (value.is_number_float()) {
    std::ostringstream out;
    out.precision(digits);
    out << value.get<double>();
    return out.str();
  }
  if (value.is_string()) return html_escape(value.get<std::string>());
  return html_escape(value.dump());
}

std::string row(const std::string& name, const std::string& value, const std::string& note = "") {
  return "<tr><th>" + name + "</th><td>" + value + "</td><td class=\"note\">" + note + "</td></tr>\n";
}

std::string percent_text(const json& fraction) { return format_value(json(100 * fraction.get<double>()), 3) + "%"; }

std::string summary_table(const json& report) {
  const json& applies = report["rule_applies"];
  const json& change = report["pixel_change"];
  std::ostringstream out;
  out << "<table>\n";

  // where the rule applies
  out << row("samples", format_value(report["samples"]["count"]) + " (" + format_value(report["samples"]["list"]) + ")");
  out << row("rule applies", format_value(applies["count"]) + " samples, " + percent_text(applies["fraction"]),
             "relative response of at least " + format_value(report["threshold"]) + " somewhere in the image");
  out << row("pixels in the region", percent_text(change["region_fraction_of_pixels"]), "of all pixels of all samples");

  // pixel change
  out << row("change inside the region",
             format_value(change["inside"]) + " (" + format_value(change["inside_8bit"], 3) + " levels)",
             "mean |after - before| per pixel, range [-1, 1] (0-255 levels)");
  out << row("change outside the region",
             format_value(change["outside"]) + " (" + format_value(change["outside_8bit"], 3) + " levels)",
             "collateral change");
  const json& applying = change["per_sample_mean_where_rule_applies"];
  const json& elsewhere = change["per_sample_mean_elsewhere"];
  if (!applying.is_null()) out << row("mean change, samples where it applies", format_value(applying["mean"]), "whole image");
  if (!elsewhere.is_null()) out << row("mean change, other samples", format_value(elsewhere["mean"]), "whole image");

  // realism
  const json& critic = report["discriminator"];
  if (!critic.is_null()) {
    out << row("discriminator logit, before", format_value(critic["mean_logit_before"]),
               "mean, where higher looks more real to the critic");
    out << row("discriminator logit, after", format_value(critic["mean_logit_after"]),
               "mean change " + format_value(critic["mean_logit_change"]));
    out << row("judged real (logit &gt; 0)", percent_text(critic["fraction_real_before"]) + " before, " +
                                                 percent_text(critic["fraction_real_after"]) + " after");
    const json& where = critic["where_rule_applies"];
    if (!where.is_null()) {
      out << row("logit where the rule applies", format_value(where["mean_logit_before"]) + " before, " +
                                                     format_value(where["mean_logit_after"]) + " after");
    }
  }
  out << "</table>\n";
  return out.str();
}

std::string patches_table(const json& report) {
  std::ostringstream out;
  out << "<table>\n<tr><th>patch</th><th>layer</th><th>rank</th><th>context response</th>"
         "<th>threshold response</th></tr>\n";
  for (const json& patch : report["patches"]) {
    out << "<tr><td>" << format_value(patch["path"]) << "</td><td>" << patch["layer"] << "</td><td>" << patch["rank"]
        << "</td><td>" << format_value(patch["context_response"]) << "</td><td>"
        << format_value(patch["threshold_response"]) << "</td></tr>\n";
  }
  out << "</table>\n";
  return out.str();
}

std::string index_list(const json& indices) {
  std::string text;
  for (const json& index : indices) text += (text.empty() ? "" : ", ") + index.dump();
  return text;
}

constexpr char kStyle[] = R"(
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
td.note { color: #666; font-size: 90%; }
.plot { display: flex; flex-wrap: wrap; align-items: center; margin: 1em 0; }
.frame { position: relative; margin-left: 40px; }
.frame img { display: block; }
.xtick { position: absolute; transform: translateX(-50%); font-size: 12px; }
.ytick { position: absolute; left: -36px; width: 30px; text-align: right; transform: translateY(-50%); font-size: 12px; }
.ylabel { writing-mode: vertical-rl; transform: rotate(180deg); font-size: 13px; }
.xlabel { flex-basis: 100%; text-align: center; font-size: 13px; margin-top: 4px; max-width: 700px; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }
img.grid { image-rendering: pixelated; max-width: 100%; }
)";

}  // namespace

void write_report(const std::string& out_dir, const json& report, const SampleMeasures& measures,
                  const ComparedSamples& most_changed, const ComparedSamples& least_changed, double threshold,
                  bool with_discriminator) {
  namespace fs = std::filesystem;
  auto path = [&](const std::string& name) { return (fs::path(out_dir) / name).string(); };

  // figures
  std::vector<double> max_response = values_of(measures.max_response);
  double response_high =
      nice_upper_bound(std::max(2 * threshold, *std::max_element(max_response.begin(), max_response.end())));
  HistogramFigure response = draw_histogram({max_response}, 0, response_high, 40, {{{31, 119, 180}}}, threshold);
  write_png(path("response_histogram.png"), response.image);
  HistogramFigure realism;
  if (with_discriminator) {
    std::vector<double> before = values_of(measures.logit_before), after = values_of(measures.logit_after);
    auto [low_before, high_before] = std::minmax_element(before.begin(), before.end());
    auto [low_after, high_after] = std::minmax_element(after.begin(), after.end());
    double low = std::floor(std::min(*low_before, *low_after)), high = std::ceil(std::max(*high_before, *high_after));
    if (!(high > low)) high = low + 1;
    realism = draw_histogram({before, after}, low, high, 30, {{{120, 120, 120}}, {{255, 127, 14}}}, 0.0);
    write_png(path("discriminator_histogram.png"), realism.image);
  }
  write_png(path("most_changed.png"), draw_sample_grid(most_changed, threshold));
  write_png(path("least_changed.png"), draw_sample_grid(least_changed, threshold));
  write_file_atomic(path("report.json"), report.dump(1) + "\n");

  // page
  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>rankone evaluation</title>"
       << "<style>" << kStyle << "</style></head><body>\n";
  html << "<h1>Edit evaluation</h1>\n<p>Model <code>" << format_value(report["model"]) << "</code>, samples "
       << format_value(report["samples"]["list"]) << ", latent stream "
       << format_value(report["sampling"]["latents"]) << ". The numbers are in <a href=\"report.json\">report.json</a>."
       << "</p>\n";
  html << patches_table(report);
  html << "<h2>Summary</h2>\n" << summary_table(report);
  html << "<h2>Where the rule applies</h2>\n<p>The response of a key k to a patch is |D k|, the size of the part "
          "of the key that the edit acts on, divided by the same response averaged over the request's own context "
          "masks (1 means as strong as where the rule was painted on average). Pixels at or above the threshold "
          "form the region where the rule applies, and a sample counts when its maximum over the image reaches the "
          "threshold (dashed red line).</p>\n";
  html << histogram_html(response, "response_histogram.png", "histogram of the maximum relative response",
                         "maximum relative response per sample", "samples");
  if (with_discriminator) {
    html << "<h2>Realism</h2>\n<p class=\"legend\">Discriminator logits of the same samples:"
         << "<span style=\"background:#787878\"></span>before<span style=\"background:#ff7f0e\"></span>after; "
            "the dashed red line is logit 0 (probability 0.5).</p>\n";
    html << histogram_html(realism, "discriminator_histogram.png", "histogram of discriminator logits",
                           "discriminator logit", "samples");
  }
  const std::string rows_text =
      "Rows: before; after; after with the change as a heatmap (red to yellow, full at 0.5 in the [-1, 1] range); "
      "before with the relative response as a heatmap (full at twice the threshold) and the region where the rule "
      "applies outlined in green.";
  html << "<h2>Most changed samples</h2>\n<p>Samples " << index_list(report["most_changed"]) << ". " << rows_text
       << "</p>\n<img class=\"grid\" src=\"most_changed.png\" alt=\"most changed samples\">\n";
  html << "<h2>Least changed samples</h2>\n<p>Samples " << index_list(report["least_changed"]) << ". " << rows_text
       << "</p>\n<img class=\"grid\" src=\"least_changed.png\" alt=\"least changed samples\">\n";
  html << "</body></html>\n";
  write_file_atomic(path("report.html"), html.str());
}

}  // namespace rankone::evaluation

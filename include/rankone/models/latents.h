// The documented latent streams that give every sample index its latent.
#pragma once

#include "rankone/models/generator.h"

#include <string>
#include <vector>

namespace rankone {

enum class LatentDistribution { kNormal, kUniform };

/// Parses "normal" or "uniform"; throws an invalid-input Error otherwise.
LatentDistribution parse_latent_distribution(const std::string& name);

/// Latents for sample `indices` ([B, size] float32), batch independent:
/// - settings.latents == "rankone": row i is numpy's RandomState(i).standard_normal(size)
///   (kNormal) or RandomState(i).uniform(-1, 1, size) (kUniform), cast to float32;
/// - "reference": row i is row i of RandomState(1).standard_normal((N, size)) cast to float32,
///   the numbering of the reference rewriting tool (kNormal only).
/// Throws an invalid-input Error for negative indices or an unknown stream.
SampleBatch make_latents(const std::vector<int64_t>& indices, int64_t size, LatentDistribution distribution,
                         const SamplingSettings& settings);

}  // namespace rankone

namespace rankone {

/// Parses sample indices such as "0-63", "5" or "1,4,10-12" (ranges inclusive).
/// Throws an invalid-input Error for malformed text or more than `max_count` indices.
std::vector<int64_t> parse_sample_indices(const std::string& text, size_t max_count = 100000);

}  // namespace rankone

#pragma once
// The checks a growth request must pass before any tensor is touched.
#include "models/model_config.hpp"
#include "runtime/transforms/grow_options.hpp"

namespace metamorph {

// Throws InputError naming the offending field and what would be valid: shrinking any
// dimension, another vocabulary or head_dim, query groups that would split (KV-group breakage),
// architecture switches that change the function (qk_norm, RoPE, epsilon, dropping biases,
// tying an untied head), bad layer positions or noise.
void validate_growth(const ModelConfig& from, const ModelConfig& to, const GrowOptions& options);

}  // namespace metamorph

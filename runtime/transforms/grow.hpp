#pragma once
// Scale-up (AquilaMoE's EfficientScale, bert2BERT's FPI and AKI): a larger dense model initialised
// from a smaller trained one, grown in width (hidden size, FFN size, attention heads with their
// KV groups) and depth. The maths is in docs/transforms.md, section "Grow".
#include <cstdint>

#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"
#include "runtime/transforms/grow_options.hpp"
#include "runtime/transforms/grow_validation.hpp"
#include "runtime/transforms/logit_deviation.hpp"

namespace metamorph {

// The grown model's parameters: whole (unsharded) tensors for `to`, zero gradients and no
// optimizer state. `source` holds the whole tensors of `from`. Validates first (InputError).
ParameterSet grow_parameters(Backend& backend, const ModelConfig& from, const ParameterSet& source,
                             const ModelConfig& to, const GrowOptions& options);

}  // namespace metamorph

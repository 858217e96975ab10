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

namespace metamorph {

// The grown model's parameters: whole (unsharded) tensors for `to`, zero gradients and no
// optimizer state. `source` holds the whole tensors of `from`. Validates first (InputError).
ParameterSet grow_parameters(Backend& backend, const ModelConfig& from, const ParameterSet& source,
                             const ModelConfig& to, const GrowOptions& options);

// How far growth moved the model's function on `tokens` (i32 [batch, seq]):
// max |logits_grown - logits_source| / max |logits_source|.
double logit_deviation(Backend& backend, const ModelConfig& from, ParameterSet& source,
                       const ModelConfig& to, ParameterSet& grown, const Tensor& tokens);

// Deterministic token ids i32 [batch, seq] in [0, vocab), for probing logit_deviation.
Tensor probe_tokens(Backend& backend, std::int64_t vocab, std::int64_t batch, std::int64_t seq,
                    std::uint64_t seed);

}  // namespace metamorph

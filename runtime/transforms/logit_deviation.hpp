#pragma once
// The function check of every shape transform: how far the transformed model's logits moved
// from the source model's on a fixed probe batch.
#include <cstdint>

#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

// max |logits_to - logits_from| / max |logits_from| on `tokens` (i32 [batch, seq]): ~1e-7 for a
// function-preserving transform, larger for AKI, copied layers, noise or a random router.
double logit_deviation(Backend& backend, const ModelConfig& from, ParameterSet& source,
                       const ModelConfig& to, ParameterSet& transformed, const Tensor& tokens);

// Deterministic token ids i32 [batch, seq] in [0, vocab), for probing logit_deviation.
Tensor probe_tokens(Backend& backend, std::int64_t vocab, std::int64_t batch, std::int64_t seq,
                    std::uint64_t seed);

}  // namespace metamorph

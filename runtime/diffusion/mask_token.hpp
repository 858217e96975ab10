#pragma once
// Adding [MASK] to an AR model before diffusion continued pretraining: the vocabulary grows by
// one id (the old vocab_size). The embedding gets one new row, the mean of the existing rows,
// so the new input sits inside the distribution the layers were trained on; an untied LM head
// gets a zero row (a tied head shares the embedding's new row). Logits of the old ids are
// unchanged; decoders never emit [MASK].
#include <cstdint>

#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph::diffusion {

// Grows config.vocab_size and the whole (unsharded) embedding/head in `params`; returns the
// [MASK] id. Optimizer moments of the grown parameters, if allocated, restart at zero.
std::int32_t add_mask_token(Backend& backend, ModelConfig& config, ParameterSet& params);

}  // namespace metamorph::diffusion

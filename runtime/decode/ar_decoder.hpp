#pragma once
// Autoregressive decoding with a KV cache: one prefill over the prompt, then one forward pass
// per new token over that token alone.
#include "runtime/decode/generation.hpp"
#include "runtime/decode/sampling.hpp"

namespace metamorph::decode {

struct ArDecodeOptions {
  SamplingOptions sampling;
  std::int32_t excluded_token = -1;  // never generated (a diffusion model's [MASK])
  bool use_cache = true;             // false: recompute the whole context every token
};

Generation generate_ar(Transformer& model, const std::vector<std::int32_t>& prompt,
                       std::int64_t max_new_tokens, const ArDecodeOptions& options,
                       const StepObserver& observer = {});

}  // namespace metamorph::decode

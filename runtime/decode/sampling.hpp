#pragma once
// Picking the next token from one row of logits: greedy (temperature 0) or temperature with
// nucleus (top-p) sampling. Draws are Philox keyed by (seed, draw index), so a generation is
// reproducible. The returned probability is the chosen token's under the distribution sampled
// from (softmax of logits / temperature, or of the logits when greedy): block-diffusion
// decoding uses it as the confidence.
#include <cstdint>

namespace metamorph::decode {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;        // keep the smallest set of tokens whose mass reaches top_p
  std::uint64_t seed = 0;
};

// Throws InputError for a negative temperature or top_p outside (0, 1].
void validate(const SamplingOptions& options);

struct Choice {
  std::int32_t token = 0;
  double probability = 0.0;
};

// `excluded` (e.g. [MASK]) is never chosen; -1 excludes nothing.
Choice choose_token(const float* logits, std::int64_t vocab, const SamplingOptions& options,
                    std::uint64_t draw, std::int32_t excluded = -1);

}  // namespace metamorph::decode

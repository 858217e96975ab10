#pragma once
// Block-diffusion decoding (BD3-LM / Fast-dLLM style). Blocks follow the training grid
// [kB, (k+1)B) from position 0, so every forward pass sees exactly what training showed the
// model: clean blocks attend block-causally among themselves and the block being decoded
// attends to all of them and to itself.
//
// The prompt's whole blocks are prefilled into the KV cache. The first block to decode is the
// one holding the prompt's end: its prompt tokens are given, the rest start as [MASK] (later
// blocks start fully masked). Each denoising step runs the block against the cache, chooses a
// token for every masked position, and commits those whose confidence (the chosen token's
// probability) reaches `threshold`, at least the most confident one, and all that remain on
// the block's last allowed step (`steps_per_block`). A finished block's clean keys/values
// enter the cache in the next block's first forward pass (the two blocks run together under
// the block-causal mask), so a block costs only its denoising steps.
//
// With the logit shift the output at position i predicts token i+1; a block's first token is
// then predicted by the previous block's last clean token.
#include "runtime/decode/generation.hpp"
#include "runtime/decode/sampling.hpp"

namespace metamorph::decode {

struct DiffusionDecodeOptions {
  std::int64_t block_size = 4;
  double threshold = 0.9;
  std::int64_t steps_per_block = 0;  // 0: block_size (one token per step at worst)
  std::int32_t mask_token = -1;
  bool logit_shift = true;
  SamplingOptions sampling;
  bool use_cache = true;  // false: recompute the whole context every step (the reference)
};

// Throws InputError naming a bad option.
void validate(const DiffusionDecodeOptions& options, std::int64_t vocab_size);

Generation generate_diffusion(Transformer& model, const std::vector<std::int32_t>& prompt,
                              std::int64_t max_new_tokens, const DiffusionDecodeOptions& options,
                              const StepObserver& observer = {});

}  // namespace metamorph::decode

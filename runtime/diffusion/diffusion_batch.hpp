#pragma once
// One micro-batch of block-diffusion training as the model sees it (BD3-LM): each row is
// [x_t ; x_0], the noisy copy then the clean copy of a sequence of n tokens, 2n tokens in one
// forward pass under MaskKind::block_diffusion (a noisy block sees itself and the clean blocks
// before it; clean blocks see clean blocks up to their own). Both halves use RoPE positions
// 0..n-1.
//
// Targets and per-token weights carry the loss, so the model's weighted cross-entropy computes
// it with nothing diffusion-specific in the model:
//   without logit shift: x_t row i, if masked, predicts x_0[i] with weight 1/t(block of i).
//   with logit shift (Dream-style, the AR head reused as is): the output at position i predicts
//     token i+1. Inside a block that is the x_t row i; a block's first token (position bB, b>0)
//     is predicted by the *clean* row bB-1 of the previous block, which sees exactly the clean
//     context before the block. Token 0 has no predictor. With B = 1 every token is a block's
//     first, so the loss is next-token prediction on the clean half: AR training.
// Clean rows carry no other loss. Rows that carry no loss hold ignore_index and weight 0.
// The normaliser is rows * n: every token of the original sequences, masked or not.
#include <cstdint>

#include "runtime/core/backend.hpp"
#include "runtime/diffusion/noise.hpp"

namespace metamorph::diffusion {

struct DiffusionOptions {
  std::int64_t block_size = 4;  // B, 1..64
  MaskingOptions masking;
  NoiseOptions noise;
  bool logit_shift = true;
  double ar_weight = 0.0;        // > 0 adds ar_weight * causal next-token loss on x_0
  std::int32_t mask_token = -1;  // [MASK]'s id; must be inside the vocabulary
  std::uint64_t seed = 0;
};

// Throws InputError naming the bad option.
void validate(const DiffusionOptions& options, std::int64_t vocab_size);

struct DiffusionBatch {
  Tensor tokens;     // i32 [rows, 2n]: x_t then x_0
  Tensor positions;  // i32 [2n]: 0..n-1 twice
  Tensor targets;    // i32 [rows, 2n]
  Tensor weights;    // f32 [rows, 2n]
  AttentionMask mask;
  std::int64_t loss_tokens = 0;  // rows * n
  std::int64_t masked = 0;       // masked tokens of x_t
};

// clean: rows * n token ids (x_0), the global samples [first_sample, first_sample + rows) of a
// global batch of global_batch rows at optimizer step `step`.
DiffusionBatch build_diffusion_batch(Backend& backend, const DiffusionOptions& options,
                                     const std::int32_t* clean, std::int64_t rows, std::int64_t n,
                                     std::int64_t step, std::int64_t first_sample,
                                     std::int64_t global_batch, std::int32_t ignore_index);

}  // namespace metamorph::diffusion

#pragma once
// A training objective other than next-token prediction on the rows (block diffusion). The
// trainer hands it each micro-batch's rows of seq + 1 tokens with their place in the global
// batch, so it can draw layout-invariant noise, and gets back the model passes that make up
// the micro-batch's loss. The trainer runs those passes through its schedule (1F1B under
// pipeline parallelism), so an objective never needs the whole model on one rank.
#include <cstdint>
#include <vector>

#include "runtime/core/attention_mask.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph {

// One forward/backward of the model: tokens i32 [rows, s] at RoPE positions i32 [s] under
// `mask`, each token's loss (its target's cross-entropy, ignore_index: none) scaled by
// weights f32 [rows, s]. Every pipeline stage builds the same pass from the same rows: the
// first embeds the tokens, the others take their shape, positions and mask, the last scores
// the targets with the weights.
struct ModelPass {
  Tensor tokens;
  Tensor positions;
  AttentionMask mask;
  Tensor targets;
  Tensor weights;
};

class MicroBatchObjective {
 public:
  virtual ~MicroBatchObjective() = default;
  // The tokens a step's loss is normalised by, for `rows` rows of `seq` inputs.
  virtual std::int64_t loss_tokens(std::int64_t rows, std::int64_t seq) const = 0;
  // rows: count rows of seq + 1 tokens, global rows [first_row, first_row + count) of a batch
  // of global_rows at optimizer step `step` (0-based). The passes' weighted loss sums add up
  // to the micro-batch's loss sum.
  virtual std::vector<ModelPass> training_passes(const std::int32_t* rows, std::int64_t count,
                                                 std::int64_t seq, std::int64_t step,
                                                 std::int64_t first_row,
                                                 std::int64_t global_rows) = 0;
  // The passes of validation micro-batch number `batch_index` (the same draw every time).
  virtual std::vector<ModelPass> validation_passes(const std::int32_t* rows, std::int64_t count,
                                                   std::int64_t seq, std::int64_t batch_index) = 0;
};

}  // namespace metamorph

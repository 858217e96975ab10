#pragma once
// Block diffusion as the trainer's micro-batch objective: x_0 is the first seq tokens of each
// row; the loss is normalised by every input token. Validation batches draw their noise from a
// separate key (seed, validation batch index), so every evaluation scores the same masks.
#include <nlohmann/json.hpp>

#include "runtime/diffusion/diffusion_objective.hpp"
#include "runtime/train/trainer.hpp"

namespace metamorph::diffusion {

class DiffusionTrainingObjective final : public MicroBatchObjective {
 public:
  DiffusionTrainingObjective(Backend& backend, Transformer& model, DiffusionOptions options);

  std::int64_t loss_tokens(std::int64_t rows, std::int64_t seq) const override {
    return rows * seq;
  }
  std::vector<ModelPass> training_passes(const std::int32_t* rows, std::int64_t count,
                                         std::int64_t seq, std::int64_t step,
                                         std::int64_t first_row, std::int64_t global_rows) override;
  std::vector<ModelPass> validation_passes(const std::int32_t* rows, std::int64_t count,
                                           std::int64_t seq, std::int64_t batch_index) override;
  // The validation loss of those passes on a whole model (one rank: `metamorph eval`).
  LossSum loss(const std::int32_t* rows, std::int64_t count, std::int64_t seq,
               std::int64_t batch_index);

 private:
  std::vector<std::int32_t> inputs(const std::int32_t* rows, std::int64_t count,
                                   std::int64_t seq) const;

  DiffusionObjective train_;
  DiffusionObjective validation_;
};

// What a checkpoint records about a diffusion run (objective, [MASK] id, block size, shift),
// for `generate` and for resuming; read back with diffusion_options_from_json.
nlohmann::json diffusion_options_to_json(const DiffusionOptions& options);
DiffusionOptions diffusion_options_from_json(const nlohmann::json& json);

}  // namespace metamorph::diffusion

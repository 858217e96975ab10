#pragma once
// The block-diffusion training objective over a Transformer: builds [x_t ; x_0] for a
// micro-batch (diffusion_batch.hpp) and runs the model's weighted cross-entropy on it.
//
// loss = (1 / tokens) * [ sum over masked x_t tokens of CE / t  +  ar_weight * sum of the causal
//        next-token CE on x_0 ], tokens = every token of the original sequences.
// The first term in expectation over t ~ U[eps, 1] is the masked-diffusion ELBO (an upper bound
// on the NLL) for the linear schedule; the AR term, when on, is a separate causal forward over
// x_0 (the clean half inside [x_t ; x_0] attends block-causally, so it would see its targets).
#include "models/transformer.hpp"
#include "runtime/diffusion/diffusion_batch.hpp"
#include "runtime/train/micro_batch_objective.hpp"

namespace metamorph::diffusion {

// Which global samples a micro-batch holds and which draw (step) it belongs to.
struct SampleRange {
  std::int64_t step = 0;
  std::int64_t first_sample = 0;  // global index of the first row
  std::int64_t global_batch = 1;  // rows of the whole optimizer step, over all ranks
};

class DiffusionObjective {
 public:
  DiffusionObjective(Backend& backend, Transformer& model, DiffusionOptions options);

  const DiffusionOptions& options() const { return options_; }
  // clean: rows * n tokens. Accumulates d(grad_scale * sum)/d(params); returns the loss sum
  // and tokens = rows * n (the normaliser the caller's grad_scale should be 1 / global tokens).
  LossSum forward_backward(const std::int32_t* clean, std::int64_t rows, std::int64_t n,
                           const SampleRange& samples, float grad_scale);
  // Loss only (validation: the NLL bound at this draw).
  LossSum loss(const std::int32_t* clean, std::int64_t rows, std::int64_t n,
               const SampleRange& samples);
  // The same as model passes for a schedule that drives the model stage by stage (pipeline
  // parallelism): [x_t ; x_0] with the block-diffusion mask, then, with ar_weight > 0, x_0
  // under the causal mask with every next-token loss weighted by ar_weight. forward_backward
  // and loss above run exactly these passes on a whole model.
  std::vector<ModelPass> passes(const std::int32_t* clean, std::int64_t rows, std::int64_t n,
                                const SampleRange& samples);

 private:
  // x_0 as tokens [rows, n] with its next-token targets (last position ignored), each
  // weighted by ar_weight, causal positions 0..n-1.
  ModelPass ar_pass(const std::int32_t* clean, std::int64_t rows, std::int64_t n);

  Backend& backend_;
  Transformer& model_;
  DiffusionOptions options_;
};

}  // namespace metamorph::diffusion

#pragma once
// AdamW over a ParameterSet: decoupled weight decay (none on norms and biases), gradient
// clipping by global norm. Parameters with trainable == false are left alone. The global norm's sum
// of squares goes through `reduce_sum` so that a sharded model adds its ranks' parts (identity on
// one rank).
#include <functional>

#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip_norm = 1.0;  // <= 0 disables clipping
};

// The rows of a parameter-shaped tensor this rank's optimizer updates: all of it, or under
// ZeRO-1 the block [optim_offset, optim_offset + adam_m rows) along dim 0.
Tensor optimizer_rows(const Parameter& p, const Tensor& t);

class AdamW {
 public:
  using ReduceSum = std::function<double(double)>;

  using CountedHere = std::function<bool(const Parameter&)>;

  // reduce_sum adds the ranks' parts of the squared norm over the model-parallel group;
  // counted_here says whether this rank contributes a parameter (a parameter replicated over
  // tensor-parallel ranks is counted on one of them only).
  // expert_reduce_sum, when given, adds the routed experts' part instead (under expert
  // parallelism the ranks holding the other experts are not in the model-parallel group).
  AdamW(
      Backend& backend, ParameterSet& params, AdamWOptions options,
      ReduceSum reduce_sum = [](double x) { return x; },
      CountedHere counted_here = [](const Parameter&) { return true; },
      ReduceSum expert_reduce_sum = {});

  // Global L2 norm of the gradients (before clipping), over the rows this rank updates.
  double grad_norm();
  // Clips to clip_norm given the norm from grad_norm(), then updates every parameter.
  void step(double lr, double grad_norm);
  void zero_grad();
  std::int64_t steps_taken() const { return step_; }
  void set_steps_taken(std::int64_t step) { step_ = step; }

 private:
  Backend& backend_;
  ParameterSet& params_;
  AdamWOptions options_;
  ReduceSum reduce_sum_;
  CountedHere counted_here_;
  ReduceSum expert_reduce_sum_;
  std::int64_t step_ = 0;
};

}  // namespace metamorph

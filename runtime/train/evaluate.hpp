#pragma once
// Validation loss of a checkpoint on a dataset's validation split (the whole dataset when it
// has none), in the loader's fixed unshuffled order so two evaluations see the same tokens.
#include <cstdint>
#include <string>

#include "runtime/core/arena.hpp"

namespace metamorph {

struct EvalOptions {
  std::string checkpoint;
  std::string data_prefix;
  std::int64_t seq = 256;
  std::int64_t micro_batch = 4;
  std::int64_t batches = 8;     // 0: every validation sample
  Device device = Device::cpu;  // cuda: one GPU (bf16 weights and activations)
};

struct EvalResult {
  double loss = 0.0;
  std::int64_t tokens = 0;
  std::int64_t step = 0;  // the checkpoint's step
};

EvalResult evaluate_checkpoint(const EvalOptions& options);

}  // namespace metamorph

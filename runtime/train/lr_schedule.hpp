#pragma once
// Linear warm-up then cosine decay to min_lr (the schedule of Megatron-LM and llm.c).
#include <cstdint>

namespace metamorph {

struct LrSchedule {
  double max_lr = 3e-4;
  double min_lr = 3e-5;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;

  // Learning rate of 1-based optimizer step `step`.
  double at(std::int64_t step) const;
};

}  // namespace metamorph

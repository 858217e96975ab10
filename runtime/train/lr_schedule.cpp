#include "runtime/train/lr_schedule.hpp"

#include <algorithm>
#include <cmath>

namespace metamorph {

double LrSchedule::at(std::int64_t step) const {
  if (warmup_steps > 0 && step <= warmup_steps)
    return max_lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
  const std::int64_t decay_steps = std::max<std::int64_t>(1, total_steps - warmup_steps);
  const double progress = std::clamp(
      static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  const double pi = 3.14159265358979323846;
  return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + std::cos(pi * progress));
}

}  // namespace metamorph

#pragma once
// The `train --timers` summary: each region's mean seconds per step over the steps added, and the
// lines the run logs at its end (ms per step and share of the "step" region, in the order the
// regions were first entered).
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace metamorph {

class TimerReport {
 public:
  void add_step(const std::vector<std::pair<std::string, double>>& step);
  std::int64_t steps() const { return steps_; }
  // Mean seconds per step of each region.
  std::vector<std::pair<std::string, double>> means() const;
  std::vector<std::string> lines() const;

 private:
  std::vector<std::pair<std::string, double>> sums_;
  std::int64_t steps_ = 0;
};

}  // namespace metamorph

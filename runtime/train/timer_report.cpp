#include "runtime/train/timer_report.hpp"

#include <algorithm>

#include "runtime/core/error.hpp"
#include "runtime/log/progress.hpp"

namespace metamorph {

void TimerReport::add_step(const std::vector<std::pair<std::string, double>>& step) {
  for (const auto& [name, seconds] : step) {
    auto it = std::find_if(sums_.begin(), sums_.end(),
                           [&name](const auto& entry) { return entry.first == name; });
    if (it == sums_.end())
      sums_.emplace_back(name, seconds);
    else
      it->second += seconds;
  }
  ++steps_;
}

std::vector<std::pair<std::string, double>> TimerReport::means() const {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& [name, seconds] : sums_)
    out.emplace_back(name, steps_ > 0 ? seconds / static_cast<double>(steps_) : 0.0);
  return out;
}

std::vector<std::string> TimerReport::lines() const {
  std::vector<std::string> out;
  if (steps_ == 0) return out;
  const auto all = means();
  double step = 0.0;
  for (const auto& [name, seconds] : all)
    if (name == "step") step = seconds;
  out.push_back(concat("timers: mean ms per step over ", steps_, " step", steps_ == 1 ? "" : "s",
                       " (nested regions are inside their parents' times)"));
  for (const auto& [name, seconds] : all)
    out.push_back(concat("  ", name, ": ", fixed(seconds * 1e3, 2), " ms",
                         step > 0 ? concat(" (", fixed(100.0 * seconds / step, 1), "%)") : ""));
  return out;
}

}  // namespace metamorph

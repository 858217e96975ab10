#pragma once
// Marks on a backend's stream of work, and the seconds between them once the device has reached
// them: what StepTimers measures regions with. On the CPU the ops run on the calling thread, so
// the host clock is the device's; the CUDA backend records events on its compute stream.
#include <chrono>
#include <cstddef>
#include <vector>

namespace metamorph {

class DeviceClock {
 public:
  virtual ~DeviceClock() = default;
  // A mark at the current point of the work queued so far; returns its index (0, 1, ...).
  virtual std::size_t mark() = 0;
  // Seconds from mark 0 to each mark, in order, after the device has reached the last one; then
  // the marks are forgotten and the next mark is index 0 again.
  virtual std::vector<double> collect() = 0;
};

class HostClock final : public DeviceClock {
 public:
  std::size_t mark() override {
    marks_.push_back(std::chrono::steady_clock::now());
    return marks_.size() - 1;
  }
  std::vector<double> collect() override {
    std::vector<double> seconds;
    seconds.reserve(marks_.size());
    for (const auto& m : marks_)
      seconds.push_back(std::chrono::duration<double>(m - marks_.front()).count());
    marks_.clear();
    return seconds;
  }

 private:
  std::vector<std::chrono::steady_clock::time_point> marks_;
};

}  // namespace metamorph

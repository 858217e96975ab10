#pragma once
// Megatron-style timers of a training step (`train --timers`): named regions (attention forward,
// MoE routing, TP all-reduce, optimizer, ...) measured on the backend's device clock, summed per
// name over the step. Regions nest; a name may be entered many times a step (every layer and
// micro-batch) and its seconds add up. The model code opens regions through TimedRegion, which
// does nothing unless the backend carries timers (Backend::set_timers), so an untimed run pays
// one null check per region.
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/core/device_clock.hpp"

namespace metamorph {

class Backend;

class StepTimers {
 public:
  explicit StepTimers(std::unique_ptr<DeviceClock> clock);

  void start(const char* name);
  // Closes the innermost open region, which must be `name` (a logic error otherwise).
  void stop(const char* name);
  // Seconds per name of the regions closed since the last collect, in the order the names were
  // first entered; waits for the device. Throws std::logic_error while a region is open.
  std::vector<std::pair<std::string, double>> collect();

 private:
  struct Interval {
    const char* name;
    std::size_t begin, end;
  };
  std::unique_ptr<DeviceClock> clock_;
  std::vector<Interval> open_;  // innermost last; `end` unset
  std::vector<Interval> closed_;
  std::vector<std::string> order_;  // names in the order they were first entered
};

// Hands `timers` to `backend` for its lifetime (Backend::set_timers), and takes them back.
class AttachedTimers {
 public:
  AttachedTimers(Backend& backend, StepTimers* timers);
  ~AttachedTimers();
  AttachedTimers(const AttachedTimers&) = delete;
  AttachedTimers& operator=(const AttachedTimers&) = delete;

 private:
  Backend& backend_;
};

// Takes `backend`'s timers away for its lifetime and gives them back: work that is not part of a
// training step (validation between steps) stays out of the next step's regions.
class PausedTimers {
 public:
  explicit PausedTimers(Backend& backend);
  ~PausedTimers();
  PausedTimers(const PausedTimers&) = delete;
  PausedTimers& operator=(const PausedTimers&) = delete;

 private:
  Backend& backend_;
  StepTimers* saved_;
};

// Times the enclosing scope as `name` when `backend` carries timers. `name` must outlive the step
// (a string literal).
class TimedRegion {
 public:
  TimedRegion(Backend& backend, const char* name);
  ~TimedRegion();
  TimedRegion(const TimedRegion&) = delete;
  TimedRegion& operator=(const TimedRegion&) = delete;

 private:
  StepTimers* timers_;
  const char* name_;
  int exceptions_;  // in flight when the region opened
};

}  // namespace metamorph

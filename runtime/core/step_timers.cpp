#include "runtime/core/step_timers.hpp"

#include <algorithm>
#include <cstring>
#include <exception>

#include "runtime/core/backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

StepTimers::StepTimers(std::unique_ptr<DeviceClock> clock) : clock_(std::move(clock)) {
  MM_ASSERT(clock_ != nullptr, "StepTimers without a clock");
}

void StepTimers::start(const char* name) {
  if (std::find(order_.begin(), order_.end(), name) == order_.end()) order_.emplace_back(name);
  open_.push_back({name, clock_->mark(), 0});
}

void StepTimers::stop(const char* name) {
  MM_ASSERT(!open_.empty() && std::strcmp(open_.back().name, name) == 0, "timer '", name,
            "' stopped while ", open_.empty() ? "none" : open_.back().name, " is the open one");
  Interval interval = open_.back();
  open_.pop_back();
  interval.end = clock_->mark();
  closed_.push_back(interval);
}

std::vector<std::pair<std::string, double>> StepTimers::collect() {
  MM_ASSERT(open_.empty(), "timers collected while '", open_.back().name, "' is open");
  const std::vector<double> at = clock_->collect();
  std::vector<std::pair<std::string, double>> sums;
  for (const std::string& name : order_) sums.emplace_back(name, 0.0);
  for (const Interval& i : closed_) {
    MM_ASSERT(i.end < at.size() && i.begin <= i.end, "timer '", i.name, "' marks ", i.begin, "..",
              i.end, " of ", at.size());
    const auto it = std::find_if(sums.begin(), sums.end(),
                                 [&i](const auto& entry) { return entry.first == i.name; });
    it->second += at[i.end] - at[i.begin];
  }
  closed_.clear();
  order_.clear();
  return sums;
}

AttachedTimers::AttachedTimers(Backend& backend, StepTimers* timers) : backend_(backend) {
  backend_.set_timers(timers);
}

AttachedTimers::~AttachedTimers() {
  backend_.set_timers(nullptr);
}

PausedTimers::PausedTimers(Backend& backend) : backend_(backend), saved_(backend.timers()) {
  backend_.set_timers(nullptr);
}

PausedTimers::~PausedTimers() {
  backend_.set_timers(saved_);
}

TimedRegion::TimedRegion(Backend& backend, const char* name)
    : timers_(backend.timers()), name_(name), exceptions_(std::uncaught_exceptions()) {
  if (timers_ != nullptr) timers_->start(name_);
}

TimedRegion::~TimedRegion() {
  // Left by an exception, the step is lost anyway; its regions are not closed (stop could throw).
  if (timers_ != nullptr && std::uncaught_exceptions() <= exceptions_) timers_->stop(name_);
}

}  // namespace metamorph

#include "runtime/checkpoint/save_signal.hpp"

#include <atomic>
#include <stdexcept>
#include <string>

namespace metamorph {

namespace {

// A signal handler receives no context, so the flag it sets has to live at namespace scope; it
// is only ever reached through the one SaveSignalGuard that owns the handlers.
static_assert(std::atomic<int>::is_always_lock_free, "the signal flag must be lock-free");
std::atomic<int> g_requested_signal{0};
std::atomic<bool> g_guard_alive{false};

extern "C" void record_signal(int signal) {
  g_requested_signal.store(signal, std::memory_order_relaxed);
}

}  // namespace

SaveSignalGuard::SaveSignalGuard(std::vector<int> signals) : signals_(std::move(signals)) {
  if (g_guard_alive.exchange(true))
    throw std::logic_error("a SaveSignalGuard is already installed");
  g_requested_signal.store(0);
  struct sigaction action {};
  action.sa_handler = record_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // interrupted reads and writes resume; the trainer polls
  for (int signal : signals_) {
    struct sigaction old {};
    if (sigaction(signal, &action, &old) != 0) {
      for (std::size_t i = 0; i < previous_.size(); ++i)
        sigaction(signals_[i], &previous_[i], nullptr);
      g_guard_alive.store(false);
      throw std::logic_error("cannot install a handler for signal " + std::to_string(signal));
    }
    previous_.push_back(old);
  }
}

SaveSignalGuard::~SaveSignalGuard() {
  for (std::size_t i = 0; i < previous_.size(); ++i) sigaction(signals_[i], &previous_[i], nullptr);
  g_guard_alive.store(false);
}

int SaveSignalGuard::requested() const {
  return g_requested_signal.load(std::memory_order_relaxed);
}

void SaveSignalGuard::clear() {
  g_requested_signal.store(0);
}

}  // namespace metamorph

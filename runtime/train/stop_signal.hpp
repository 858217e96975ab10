#pragma once
// SIGTERM / SIGUSR1 (what SLURM and other schedulers send before preemption) ask the trainer to
// checkpoint at the end of the current step and exit cleanly. A signal handler can only touch a
// lock-free flag with static storage, so this is the one process-wide state in the runtime; it is
// installed by the object below and read through it.
#include <csignal>

namespace metamorph {

class StopSignal {
 public:
  // Installs handlers for SIGTERM and SIGUSR1; the previous handlers come back on destruction.
  StopSignal();
  ~StopSignal();
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;

  // The signal number received since installation, or 0.
  int received() const;

 private:
  struct sigaction previous_term_{};
  struct sigaction previous_usr1_{};
};

}  // namespace metamorph

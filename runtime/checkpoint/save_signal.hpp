#pragma once
// "Save and exit" requests from a cluster scheduler: SLURM and others send SIGTERM (or a chosen
// signal such as SIGUSR1) some time before preempting a job. The handler only sets a flag; the
// trainer polls it between steps, saves, and exits cleanly.
//
//   SaveSignalGuard signals;                 // SIGTERM and SIGUSR1
//   for (...) { train_step(); if (signals.requested()) { save_checkpoint(...); break; } }
//
// Under MPI the signal may reach only some ranks: combine requested() over ranks (an allreduce of
// MAX) before acting, so every rank saves the same step.
#include <csignal>
#include <vector>

namespace metamorph {

class SaveSignalGuard {
 public:
  // Installs the handlers; the previous ones come back when the guard dies. Only one guard may
  // be alive at a time (std::logic_error otherwise).
  explicit SaveSignalGuard(std::vector<int> signals = {SIGTERM, SIGUSR1});
  ~SaveSignalGuard();
  SaveSignalGuard(const SaveSignalGuard&) = delete;
  SaveSignalGuard& operator=(const SaveSignalGuard&) = delete;

  // The last signal received since construction or clear(), or 0.
  int requested() const;
  void clear();

 private:
  std::vector<int> signals_;
  std::vector<struct sigaction> previous_;
};

}  // namespace metamorph

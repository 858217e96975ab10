#pragma once
// Bounds the operations a rank does not wait for on the host. An NCCL operation's completion is
// handed to the compute stream (it waits for the operation's event on the GPU), so the host keeps
// queueing kernels instead of stalling at every collective; this thread then checks that each
// such event is reached within the timeout and that NCCL reports no asynchronous error. It also
// bounds the host calls into a blocking NCCL communicator (HostCall): initialisation, a lazy
// connection to a peer, or a launch waiting for queue space behind a hung kernel would otherwise
// block the rank's only thread. On a fault it calls the owner's fail hook once: that hook aborts
// the job, or (in tests) records the failure for the owner's next call to report.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace metamorph {

// Names a watched operation, e.g. "send of 4096 elements to rank 1". Only a fault formats it: a
// string built per call cost a 1 MiB all-to-all host time the GPU then waited for.
struct OperationLabel {
  const char* op = "";
  std::int64_t elements = 0;
  const char* peer_relation = nullptr;  // " to rank ", " from rank ", or none
  int peer = -1;
  std::string text() const;
};

class NcclWatchdog {
 public:
  struct Hooks {
    // NCCL's asynchronous error of the owner's communicators, "" while healthy. Called from the
    // watchdog thread.
    std::function<std::string()> async_error;
    // Called once, from the watchdog thread, with the reason.
    std::function<void(const std::string&)> fail;
  };

  NcclWatchdog(double timeout_s, Hooks hooks);
  ~NcclWatchdog();
  NcclWatchdog(const NcclWatchdog&) = delete;
  NcclWatchdog& operator=(const NcclWatchdog&) = delete;

  // An event for the next operation to record: one that an earlier operation reached, or a new
  // one. Creating and destroying an event per operation cost small collectives about as much
  // host time as NCCL's own enqueue.
  cudaEvent_t take_event();
  // Takes `done` (back to the free events once reached): the operation `what` must reach it
  // within the timeout.
  void watch(cudaEvent_t done, const OperationLabel& what);
  // Operations not yet seen complete.
  std::size_t pending() const;

  // While alive, the host call `what` must return within the timeout, or the fail hook is called
  // with a reason starting with kHostCallPrefix (the host is then blocked inside the call: the
  // hook can only end the process).
  class HostCall {
   public:
    HostCall(NcclWatchdog& watchdog, const char* what);
    ~HostCall();
    HostCall(const HostCall&) = delete;
    HostCall& operator=(const HostCall&) = delete;

   private:
    NcclWatchdog& watchdog_;
  };
  static constexpr const char* kHostCallPrefix = "host call ";

 private:
  using Clock = std::chrono::steady_clock;
  struct Pending {
    cudaEvent_t done;
    OperationLabel what;
    Clock::time_point deadline;
  };
  void run();
  // Drops completed operations; returns the reason of a fault, "" if none.
  std::string check();

  const double timeout_s_;
  const Hooks hooks_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;
  const char* host_call_ = nullptr;  // the blocking call in progress, if any
  Clock::time_point host_deadline_{};
  std::vector<cudaEvent_t> free_events_;
  bool stopping_ = false;
  bool failed_ = false;
  int device_ = 0;
  std::thread thread_;
};

}  // namespace metamorph

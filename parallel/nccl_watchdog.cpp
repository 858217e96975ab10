#include "parallel/nccl_watchdog.hpp"

#include "parallel/communicator.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
constexpr auto kIdlePoll = std::chrono::milliseconds(50);
}  // namespace

std::string OperationLabel::text() const {
  return peer_relation == nullptr ? concat(op, " of ", elements, " elements")
                                  : concat(op, " of ", elements, " elements", peer_relation, peer);
}

NcclWatchdog::NcclWatchdog(double timeout_s, Hooks hooks)
    : timeout_s_(timeout_s), hooks_(std::move(hooks)) {
  // The thread queries events of the creator's device.
  cudaGetDevice(&device_);
  thread_ = std::thread([this] { run(); });
}

NcclWatchdog::~NcclWatchdog() {
  {
    const std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  for (const Pending& p : pending_) cudaEventDestroy(p.done);
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
}

cudaEvent_t NcclWatchdog::take_event() {
  {
    const std::lock_guard lock(mutex_);
    if (!free_events_.empty()) {
      cudaEvent_t e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
  }
  cudaEvent_t e = nullptr;
  if (const cudaError_t status = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
      status != cudaSuccess)
    throw CommError(concat("cudaEventCreate: ", cudaGetErrorString(status)));
  return e;
}

void NcclWatchdog::watch(cudaEvent_t done, const OperationLabel& what) {
  // No notify, as for host calls: the deadline is seconds away and the idle thread looks every
  // kIdlePoll; a wake-up per burst of operations was a system call on the caller's path.
  const std::lock_guard lock(mutex_);
  pending_.push_back({done, what,
                      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(timeout_s_))});
}

NcclWatchdog::HostCall::HostCall(NcclWatchdog& watchdog, const char* what) : watchdog_(watchdog) {
  const std::lock_guard lock(watchdog_.mutex_);
  watchdog_.host_call_ = what;
  watchdog_.host_deadline_ =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(watchdog_.timeout_s_));
}

NcclWatchdog::HostCall::~HostCall() {
  const std::lock_guard lock(watchdog_.mutex_);
  watchdog_.host_call_ = nullptr;
}

std::size_t NcclWatchdog::pending() const {
  const std::lock_guard lock(mutex_);
  return pending_.size();
}

std::string NcclWatchdog::check() {
  const auto now = Clock::now();
  const std::lock_guard lock(mutex_);
  if (host_call_ != nullptr && now > host_deadline_)
    return concat(kHostCallPrefix, host_call_, " did not return within ", timeout_s_, " s");
  while (!pending_.empty()) {
    const Pending& oldest = pending_.front();
    const cudaError_t state = cudaEventQuery(oldest.done);
    if (state == cudaSuccess) {
      free_events_.push_back(oldest.done);
      pending_.pop_front();
      continue;
    }
    if (state != cudaErrorNotReady)
      return concat(oldest.what.text(), ": CUDA error ", cudaGetErrorString(state));
    if (now > oldest.deadline)
      return concat(oldest.what.text(), " did not complete within ", timeout_s_, " s");
    break;
  }
  // Later operations cannot be older than the oldest one still running.
  return pending_.empty() ? std::string() : hooks_.async_error();
}

void NcclWatchdog::run() {
  cudaSetDevice(device_);
  for (;;) {
    {
      // A host call registers without waking the thread: its deadline is seconds away, so the
      // idle thread looks every kIdlePoll instead (a notify would cost every call a system call).
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, kIdlePoll, [this] {
        return stopping_ || ((!pending_.empty() || host_call_ != nullptr) && !failed_);
      });
      if (stopping_) return;
      if (failed_ || (pending_.empty() && host_call_ == nullptr)) continue;
    }
    if (const std::string why = check(); !why.empty()) {
      {
        const std::lock_guard lock(mutex_);
        failed_ = true;
      }
      hooks_.fail(why);
      continue;
    }
    // Polling: an event cannot wake a thread. A millisecond is far below any timeout and costs
    // next to nothing next to the GPU work it watches.
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace metamorph

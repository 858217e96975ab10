#pragma once
// The Communicator over NCCL, on GPU tensors. Bootstrapped over MPI: the group's MPI
// communicator broadcasts the NCCL unique id, and keeps serving the small host-side exchanges
// (counts, size checks) and barriers. Each communicator owns a dedicated CUDA stream, so its
// collectives overlap the compute stream: an operation first makes its stream wait for the work
// already queued on the compute stream (the tensors' producers), and a started operation's
// request completes when its stream has passed it.
//
// Point-to-point messages travel on two more NCCL communicators over the same members, one per
// direction (towards higher ranks, towards lower ranks), each on its own stream: a pipeline stage
// posts its forward send and its backward receive in an order its neighbour does not mirror, and
// on one stream a send waits for its matching receive, which would deadlock.
//
// Host tensors (scalars, counts, flags the runtime reduces next to the model) go over the MPI
// communicator the group was bootstrapped with, so callers need not know which kind a group is.
//
// Completion is stream-ordered: waiting for an operation makes the compute stream wait for its
// event on the GPU and returns, so the host keeps queueing work as it would without
// communication (the tensors' next consumers run after the operation; host reads go through
// copies ordered on the compute stream). A watchdog thread (NcclWatchdog) checks that every such
// event is reached within the MPI options' timeout. Host-side waits (synchronize, barrier,
// initialisation) poll against the same deadline as the MPI backend; NCCL's asynchronous errors (a
// peer died, a network failure) are checked while polling. Either way the communicator is aborted
// (ncclCommAbort) and the job ends with one line naming the operation and the group, instead of
// hanging.
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.hpp"
#include "parallel/nccl_watchdog.hpp"

namespace metamorph {

class NcclCommunicator final : public Communicator {
 public:
  // One NCCL communicator over the members of `mpi` (collective over them), on the current CUDA
  // device. Collectives wait for `compute_stream` (0: the legacy default stream).
  static std::unique_ptr<NcclCommunicator> create(std::unique_ptr<MpiCommunicator> mpi,
                                                  cudaStream_t compute_stream = nullptr);
  ~NcclCommunicator() override;

  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  const std::string& name() const override { return mpi_->name(); }
  ncclComm_t handle() const { return collective_.comm; }
  cudaStream_t stream() const { return collective_.stream; }
  // The stream whose queued work every operation waits for (the backend's compute stream).
  void set_compute_stream(cudaStream_t stream) { compute_stream_ = stream; }

  std::unique_ptr<Communicator> subgroup(const std::vector<int>& members,
                                         const std::string& name) override;

  // Ends this rank's part at once, without the peers (ncclCommAbort): for a job that is failing,
  // where a collective destroy could wait on a dead peer.
  void abort();

  // Blocks until `done` has been reached, under the watchdog deadline.
  void wait_event(cudaEvent_t done, const std::string& what) const;
  // Makes the compute stream wait for `done` (the end of operation `what`) and hands the event
  // to the watchdog, which destroys it once reached.
  void complete_on_compute_stream(cudaEvent_t done, std::string what) const;
  // Blocks the host until everything queued on this communicator has completed; throws
  // CommError if an operation failed or timed out.
  void synchronize();

 protected:
  std::unique_ptr<CommRequest> do_start_all_reduce(Tensor& x, ReduceOp op) override;
  std::unique_ptr<CommRequest> do_start_reduce_scatter(const Tensor& in, Tensor& out,
                                                       ReduceOp op) override;
  std::unique_ptr<CommRequest> do_start_all_gather(const Tensor& in, Tensor& out) override;
  void do_all_to_all(const Tensor& in, Tensor& out) override;
  void do_all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
                       const std::vector<std::int64_t>& recv_counts) override;
  // Grouped ncclSend/ncclRecv on the collective lane; the request completes on the compute
  // stream when waited for, so the caller may queue independent work in between.
  std::unique_ptr<CommRequest> do_start_all_to_all_v(
      const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
      const std::vector<std::int64_t>& recv_counts) override;
  void do_broadcast(Tensor& x, int root) override;
  std::unique_ptr<CommRequest> do_start_send(const Tensor& x, int dst, int tag) override;
  std::unique_ptr<CommRequest> do_start_recv(Tensor& x, int src, int tag) override;
  void do_barrier() override;
  bool size_checks() const override { return mpi_->options().size_checks; }
  bool reduces(DType) const override { return true; }
  void host_max(std::vector<std::int64_t>& values) override;
  std::vector<std::int64_t> host_all_to_all(const std::vector<std::int64_t>& counts) override;

 private:
  // One NCCL communicator over the members and the stream its operations run on.
  struct Lane {
    ncclComm_t comm = nullptr;  // null once aborted
    cudaStream_t stream = nullptr;
  };

  NcclCommunicator(std::unique_ptr<MpiCommunicator> mpi, cudaStream_t compute_stream);
  // Creates `lane` over the members (collective over them).
  void open(Lane& lane, const char* what);
  // The lane of a message to (sending) or from (receiving) `peer`.
  Lane& p2p_lane(int peer, bool sending);
  // Makes the lane's stream wait for the compute stream's queued work.
  void after_compute(const Lane& lane) const;
  // A request completing when the lane's stream passes this point, keeping `tensors` alive.
  std::unique_ptr<CommRequest> finish(const Lane& lane, std::string what,
                                      std::vector<Tensor> tensors);
  // Checks a non-blocking NCCL call and polls until it has settled, under the watchdog.
  void settle(ncclResult_t result, const char* call, const std::string& what,
              const Lane& lane) const;
  void settle(ncclResult_t result, const char* call, const std::string& what) const {
    settle(result, call, what, collective_);
  }
  // Runs one NCCL call while the watchdog thread cannot query the lanes: NCCL finishes a
  // non-blocking communicator's pending work inside ncclCommGetAsyncError, which must not run on
  // two threads at once.
  template <class Call>
  ncclResult_t locked(Call call) const {
    const std::lock_guard lock(lanes_mutex_);
    return call();
  }
  // Throws CommError naming the call and NCCL's message.
  void check(ncclResult_t result, const char* call) const;
  [[noreturn]] void fail(const std::string& why) const;

  // Aborts every lane (frees their GPU-side state).
  void abort_lanes() const;
  bool aborted() const { return collective_.comm == nullptr; }
  // Throws (through fail) when the watchdog found a fault since the last call.
  void check_healthy() const;
  // The watchdog's hooks: NCCL's asynchronous error of any lane; a fault found by the thread.
  std::string lanes_async_error() const;
  void on_watchdog_fault(const std::string& why) const;

  std::unique_ptr<MpiCommunicator> mpi_;
  mutable Lane collective_, upward_, downward_;  // upward: from lower to higher ranks
  cudaStream_t compute_stream_ = nullptr;
  cudaEvent_t compute_ready_ = nullptr;
  int device_ = 0;
  // Guards the lanes' handles between the watchdog thread (error checks) and aborts.
  mutable std::mutex lanes_mutex_;
  mutable std::atomic<bool> watchdog_fault_{false};
  mutable std::string watchdog_reason_;  // under lanes_mutex_
  std::unique_ptr<NcclWatchdog> watchdog_;
};

}  // namespace metamorph

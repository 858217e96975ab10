#pragma once
// The Communicator over NCCL, on GPU tensors. Bootstrapped over MPI: the group's MPI
// communicator broadcasts the NCCL unique id, and keeps serving the small host-side exchanges
// (counts, size checks) and barriers.
//
// Two streams carry the collectives. A started operation (start_*) runs on the communicator's
// own stream, the collective lane, so it overlaps the compute stream: it first makes the lane
// wait for the work already queued on the compute stream (the tensors' producers), and its
// request completes when the lane has passed it. A blocking operation (all_reduce,
// reduce_scatter, all_gather, all_to_all, all_to_all_v, broadcast) has nothing to overlap, so it is
// enqueued on the compute stream itself: no stream waits for another, no request (one event after
// it, for the watchdog below): the two cross-stream hops of a lane (compute -> lane -> compute,
// each a GPU-side wait that serialises back-to-back calls) cost small messages a measurable part
// of their time (docs/benchmarks.md). NCCL operations of one communicator must reach the GPU in the
// order they were issued, on every rank alike, and NCCL does not order work queued on two streams:
// so a blocking operation issued after a started one first makes the compute stream wait for the
// lane (the lane already waits for the compute stream before each started operation, which orders
// the other direction).
//
// The collective lane's NCCL communicator is blocking: a non-blocking one hands every launch to a
// new thread of NCCL's (ncclInProgress, then polled), about 10 us of host time per call, which
// held 1 MiB all-reduces to 0.42-0.61 of raw NCCL's bus bandwidth. A blocking NCCL call can wait
// on the host (initialisation, connecting to a peer, queue space behind a hung kernel), so each
// runs under the watchdog's host-call deadline, and the lane connects its peers at creation.
//
// Point-to-point messages travel on two more NCCL communicators over the same members, one per
// direction (towards higher ranks, towards lower ranks), each on its own stream: a pipeline stage
// posts its forward send and its backward receive in an order its neighbour does not mirror, and
// on one stream a send waits for its matching receive, which would deadlock.
//
// Host tensors (scalars, counts, flags the runtime reduces next to the model) go over the MPI
// communicator the group was bootstrapped with, so callers need not know which kind a group is.
//
// Completion is stream-ordered: waiting for a started operation makes the compute stream wait for
// its event on the GPU and returns, and a blocking one returns once queued, so the host keeps
// queueing work as it would without communication (the tensors' next consumers run after the
// operation; host reads go through copies ordered on the compute stream). A watchdog thread
// (NcclWatchdog) checks that every operation's event (for a blocking one, recorded on the compute
// stream right after it) is reached within the MPI options' timeout. Host-side waits (synchronize,
// barrier, the point-to-point lanes' initialisation) poll against the same deadline as the MPI
// backend; NCCL's asynchronous errors (a peer died, a network failure) are checked while polling.
// Either way the communicator is aborted (ncclCommAbort) and the job ends with one line naming the
// operation and the group, instead of hanging. A host call into the blocking lane that outlives
// the deadline holds the rank's only thread: the watchdog then ends the process (exit code 3),
// in tests too.
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
  // The collective lane's stream, where started collectives run.
  cudaStream_t stream() const { return collective_.stream; }
  // The stream whose queued work every operation waits for and where blocking collectives run
  // (the backend's compute stream).
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
  void complete_on_compute_stream(cudaEvent_t done, const OperationLabel& what) const;
  // Blocks the host until everything queued on this communicator has completed (its lanes and,
  // for the blocking collectives, the compute stream); throws CommError if an operation failed
  // or timed out.
  void synchronize();

 protected:
  std::unique_ptr<CommRequest> do_start_all_reduce(Tensor& x, ReduceOp op) override;
  // The blocking forms run on the compute stream (see the top of this file).
  void do_all_reduce(Tensor& x, ReduceOp op) override;
  std::unique_ptr<CommRequest> do_start_reduce_scatter(const Tensor& in, Tensor& out,
                                                       ReduceOp op) override;
  void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  std::unique_ptr<CommRequest> do_start_all_gather(const Tensor& in, Tensor& out) override;
  void do_all_gather(const Tensor& in, Tensor& out) override;
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
    // Set when an operation is started on the lane, cleared when the compute stream has been
    // made to wait for the lane: the collective lane's tells a blocking collective whether it
    // must order itself behind started ones.
    bool ahead_of_compute = false;
  };

  NcclCommunicator(std::unique_ptr<MpiCommunicator> mpi, cudaStream_t compute_stream);
  // Creates `lane` over the members (collective over them); `blocking`: NCCL calls return once
  // their work is queued, rather than handing it to a thread of NCCL's (see create()).
  void open(Lane& lane, const char* what, bool blocking);
  // One small all-reduce on the collective lane, waited for: NCCL connects the peers inside the
  // first operation that needs them.
  void connect_collective_lane();
  // The lane of a message to (sending) or from (receiving) `peer`.
  Lane& p2p_lane(int peer, bool sending);
  // Makes the lane's stream wait for the compute stream's queued work.
  void after_compute(Lane& lane) const;
  // Before a blocking collective on the compute stream: if operations were started on the
  // collective lane since the last such call, the compute stream waits for the lane, so the
  // communicator's operations reach the GPU in issue order.
  void after_collective_lane();
  // After a blocking collective's NCCL call: a pooled event on the compute stream for the
  // watchdog to bound the operation `what` by.
  void watch_compute_stream(const OperationLabel& what);
  // The NCCL calls of the operations that have a started and a blocking form, enqueued on
  // `stream` (the collective lane's for the started form, the compute stream for the blocking
  // one) and settled. The all-to-all-v returns the elements this rank sends.
  void enqueue_all_reduce(Tensor& x, ReduceOp op, cudaStream_t stream);
  void enqueue_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, cudaStream_t stream);
  void enqueue_all_gather(const Tensor& in, Tensor& out, cudaStream_t stream);
  std::size_t enqueue_all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_counts,
                                   Tensor& out, const std::vector<std::int64_t>& recv_counts,
                                   cudaStream_t stream);
  // A request completing when the lane's stream passes this point, keeping `tensors` alive.
  std::unique_ptr<CommRequest> finish(const Lane& lane, const OperationLabel& what,
                                      std::vector<Tensor> tensors);
  // Checks a non-blocking NCCL call and polls until it has settled, under the watchdog.
  void settle(ncclResult_t result, const char* call, const std::string& what,
              const Lane& lane) const;
  void settle(ncclResult_t result, const char* call, const std::string& what) const {
    settle(result, call, what, collective_);
  }
  // Runs one NCCL call while the watchdog thread cannot query the lanes (NCCL finishes a
  // non-blocking communicator's pending work inside ncclCommGetAsyncError, which must not run on
  // two threads at once), and under the watchdog's deadline for host calls (a blocking
  // communicator's call may wait for a peer on the host).
  template <class Call>
  ncclResult_t locked(const char* what, Call call) const {
    const NcclWatchdog::HostCall guard(*watchdog_, what);
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
  cudaEvent_t lane_passed_ = nullptr;  // recorded on the collective lane by after_collective_lane
  int device_ = 0;
  bool has_all_to_all_ = false;  // the loaded NCCL has ncclAlltoAll
  // Guards the lanes' handles between the watchdog thread (error checks) and aborts.
  mutable std::mutex lanes_mutex_;
  mutable std::atomic<bool> watchdog_fault_{false};
  // The watchdog's reason, apart from lanes_mutex_, which a blocking NCCL call may hold for long.
  mutable std::mutex reason_mutex_;
  mutable std::string watchdog_reason_;  // under reason_mutex_
  std::unique_ptr<NcclWatchdog> watchdog_;
};

}  // namespace metamorph

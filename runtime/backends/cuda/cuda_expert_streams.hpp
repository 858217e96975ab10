#pragma once
// The side streams the experts' weight-gradient GEMMs run on at the same time
// (CudaBackend::grouped_matmul_weight_grad): their inner dimension is one expert's rows, so one
// expert after another leaves the device idle at every GEMM's tail.
//
// How the side streams are ordered with everything else. The backend's compute stream is the
// legacy default stream (stream 0). The side streams are blocking streams (cudaStreamCreate's
// default flags), so the legacy stream's implicit synchronisation already orders them: an
// operation queued on the legacy stream waits for all earlier work of every blocking stream, and
// work queued later on a blocking stream waits for the legacy stream's earlier work (CUDA Runtime
// API, "Stream synchronization behavior"). The fork and the join still use explicit events: one
// recorded on the compute stream that every lane waits for before its first GEMM, and one recorded
// on every lane after its last GEMM that the compute stream waits for. The documentation names
// kernel launches and cudaStreamWaitEvent among the legacy stream's synchronising actions but does
// not say that cudaEventRecord is one, and the NCCL communicator's lanes, non-blocking streams
// outside the implicit synchronisation, learn that a tensor is ready from an event recorded on the
// compute stream (NcclCommunicator::after_compute, the watchdog's events): with the join's waits
// queued on the compute stream, an event recorded there afterwards completes after the experts'
// GEMMs by plain stream order, documented or not. An event record and a wait cost a few
// microseconds per lane and grouped call. The side streams stay blocking so that a legacy-stream
// operation queued between a fork and its join is still ordered with them.
//
// The same ordering keeps the arena right (cuda_arena.hpp): a block released after a grouped call
// is next used by work queued on the compute stream after the join, so after the lanes' GEMMs;
// and the lanes start after everything queued before the fork, so after the earlier users of the
// blocks they read and write. (A communicator given another compute stream, as nccl_bench does for
// its raw comparisons, is outside the backend's ordering whatever the GEMMs do.)
#include <cuda_runtime.h>

#include <vector>

#include "runtime/backends/cuda/cuda_matmul_cache.hpp"
#include "runtime/core/arena.hpp"

namespace metamorph::cuda {

class ExpertStreams {
 public:
  // `lanes` (at least 2) side streams. Lane 0 takes `compute_workspace`, the compute stream's: the
  // compute stream waits between the fork and the join, so nothing else uses it meanwhile. Every
  // other lane takes a workspace of its own from `arena` (lanes - 1 x 32 MiB in the arena's peak).
  ExpertStreams(int lanes, void* compute_workspace, Arena& arena);
  ~ExpertStreams();
  ExpertStreams(const ExpertStreams&) = delete;
  ExpertStreams& operator=(const ExpertStreams&) = delete;

  int size() const { return static_cast<int>(lanes_.size()); }
  const GemmLane& lane(int i) const { return lanes_.at(static_cast<std::size_t>(i)); }

  // Orders the first `used` lanes after everything queued so far on the compute stream.
  void fork(int used);
  // Orders everything queued from now on on the compute stream after the first `used` lanes'
  // work.
  void join(int used);

 private:
  // Streams, events and side workspaces back (also of a constructor that failed half-way).
  void release_all();

  Arena& arena_;
  std::vector<GemmLane> lanes_;
  std::vector<cudaEvent_t> lane_done_;   // one per lane, recorded by join
  cudaEvent_t compute_ready_ = nullptr;  // recorded by fork on the compute stream
};

}  // namespace metamorph::cuda

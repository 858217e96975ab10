// The experts' weight-gradient GEMMs of the CUDA backend: each non-empty group is the very
// cuBLASLt GEMM that CudaBackend::matmul runs for it (same plan key, so the same algorithm and the
// same bits), round-robin on the side streams of cuda_expert_streams.hpp, all at the same time:
// each writes a tensor of its own, so the order in which they finish cannot change a bit. The
// forward and input-gradient grouped GEMMs are the Backend default (one expert after another on
// the compute stream): on an H100 the side streams made them 0.84-1.08x as fast
// (docs/benchmarks.md, "expert streams"), while the weight gradients, whose inner dimension is only
// the group's rows, ran 1.19-1.30x.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_check.hpp"
#include "runtime/backends/cuda/cuda_expert_streams.hpp"
#include "runtime/backends/cuda/cuda_matmul_cache.hpp"
#include "runtime/core/row_groups.hpp"

namespace metamorph::cuda {

namespace {

// The lanes of one grouped call, forked from the compute stream on construction and joined back
// into it by join() or, when a GEMM's checks throw half-way, by the destructor: the compute
// stream never runs ahead of a GEMM still writing.
class ForkedLanes {
 public:
  ForkedLanes(ExpertStreams& streams, int used) : streams_(streams), used_(used) {
    streams_.fork(used_);
  }
  ~ForkedLanes() {
    if (joined_) return;
    try {
      streams_.join(used_);
    } catch (...) {
      // Already unwinding from the error that matters.
    }
  }
  ForkedLanes(const ForkedLanes&) = delete;
  ForkedLanes& operator=(const ForkedLanes&) = delete;

  // The lane of the i-th non-empty group: round-robin.
  const GemmLane& lane_of(std::size_t i) const {
    return streams_.lane(static_cast<int>(i % static_cast<std::size_t>(used_)));
  }
  void join() {
    joined_ = true;
    streams_.join(used_);
  }

 private:
  ExpertStreams& streams_;
  int used_;
  bool joined_ = false;
};

}  // namespace

void CudaBackend::set_expert_streams(int streams) {
  require(streams >= 1, "expert streams: ", streams, "; valid: 1 (the experts' GEMMs one after ",
          "another on the compute stream) or more (that many side streams)");
  if (streams == expert_streams_) return;
  // Streams and workspaces of another count go back now; the next grouped call that needs side
  // streams makes them anew.
  side_streams_.reset();
  expert_streams_ = streams;
}

int CudaBackend::lanes_for(std::size_t groups) const {
  if (groups < 2) return 1;
  return static_cast<int>(std::min<std::size_t>(groups, static_cast<std::size_t>(expert_streams_)));
}

ExpertStreams& CudaBackend::side_streams() {
  if (side_streams_ == nullptr)
    side_streams_ = std::make_unique<ExpertStreams>(expert_streams_,
                                                    matmuls_->compute_lane().workspace, arena_);
  return *side_streams_;
}

void CudaBackend::grouped_matmul_weight_grad(const Tensor& dy, const Tensor& x,
                                             const std::vector<std::int64_t>& counts,
                                             const std::vector<Tensor*>& dweights) {
  MM_ASSERT(dweights.size() == counts.size(), "grouped_matmul_weight_grad: ", dweights.size(),
            " gradients for ", counts.size(), " groups");
  const std::vector<RowGroup> groups =
      non_empty_row_groups(counts, x.dim(0), dy.dim(0), "grouped_matmul_weight_grad");
  // The inner dimension is a group's row count, never 0 for a non-empty group.
  const int used = lanes_for(groups.size());
  if (used == 1) {
    for (const RowGroup& g : groups)
      matmul(dy.slice(g.first, g.first + g.count), true, x.slice(g.first, g.first + g.count), false,
             *dweights[g.index], 1.0f, 1.0f);
    return;
  }
  // Two groups accumulating into the same memory would race on different streams (one after the
  // other they would not). Each expert's gradient is its own tensor: this catches a caller's bug.
  const auto overlap = overlapping_group_tensors(dweights, groups);
  MM_ASSERT(!overlap, "grouped_matmul_weight_grad: the gradients of groups ",
            overlap ? overlap->first : 0, " and ", overlap ? overlap->second : 0,
            " overlap; groups that run at the same time need tensors of their own");
  ForkedLanes lanes(side_streams(), used);
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const RowGroup& g = groups[i];
    matmul_on(lanes.lane_of(i), dy.slice(g.first, g.first + g.count), true,
              x.slice(g.first, g.first + g.count), false, *dweights[g.index], 1.0f, 1.0f);
  }
  lanes.join();
}

}  // namespace metamorph::cuda

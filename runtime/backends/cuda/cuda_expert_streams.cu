#include "runtime/backends/cuda/cuda_expert_streams.hpp"

#include "runtime/backends/cuda/cuda_check.hpp"

namespace metamorph::cuda {

ExpertStreams::ExpertStreams(int lanes, void* compute_workspace, Arena& arena) : arena_(arena) {
  MM_ASSERT(lanes >= 2, "expert streams: ", lanes, " lanes (one lane is the compute stream)");
  MM_ASSERT(compute_workspace != nullptr, "expert streams without the compute workspace");
  try {
    MM_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
    for (int i = 0; i < lanes; ++i) {
      GemmLane lane;
      // Blocking (default flags): see the header for why, and why the events are needed anyway.
      MM_CUDA_CHECK(cudaStreamCreate(&lane.stream));
      lanes_.push_back(lane);
      lanes_.back().workspace =
          i == 0 ? compute_workspace : arena.allocate(MatmulCache::kWorkspaceBytes);
      cudaEvent_t done = nullptr;
      MM_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
      lane_done_.push_back(done);
    }
  } catch (...) {
    release_all();
    throw;
  }
}

ExpertStreams::~ExpertStreams() {
  release_all();
}

void ExpertStreams::release_all() {
  // A stream destroyed with work queued is released once that work completes; a workspace
  // released here is next used by compute-stream work, which the last join already ordered after
  // every lane.
  for (std::size_t i = 0; i < lanes_.size(); ++i) {
    if (i > 0 && lanes_[i].workspace != nullptr)
      arena_.release(lanes_[i].workspace, MatmulCache::kWorkspaceBytes);
    cudaStreamDestroy(lanes_[i].stream);
  }
  lanes_.clear();
  for (cudaEvent_t done : lane_done_) cudaEventDestroy(done);
  lane_done_.clear();
  if (compute_ready_ != nullptr) cudaEventDestroy(compute_ready_);
  compute_ready_ = nullptr;
}

void ExpertStreams::fork(int used) {
  MM_ASSERT(used >= 1 && used <= size(), "expert streams: fork of ", used, " of ", size(),
            " lanes");
  MM_CUDA_CHECK(cudaEventRecord(compute_ready_, nullptr));
  for (int i = 0; i < used; ++i)
    MM_CUDA_CHECK(
        cudaStreamWaitEvent(lanes_[static_cast<std::size_t>(i)].stream, compute_ready_, 0));
}

void ExpertStreams::join(int used) {
  MM_ASSERT(used >= 1 && used <= size(), "expert streams: join of ", used, " of ", size(),
            " lanes");
  for (int i = 0; i < used; ++i) {
    const auto at = static_cast<std::size_t>(i);
    MM_CUDA_CHECK(cudaEventRecord(lane_done_[at], lanes_[at].stream));
    MM_CUDA_CHECK(cudaStreamWaitEvent(nullptr, lane_done_[at], 0));
  }
}

}  // namespace metamorph::cuda

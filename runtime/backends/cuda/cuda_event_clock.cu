#include "runtime/backends/cuda/cuda_event_clock.hpp"

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_check.hpp"

namespace metamorph::cuda {

CudaEventClock::~CudaEventClock() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

std::size_t CudaEventClock::mark() {
  if (used_ == events_.size()) {
    cudaEvent_t e = nullptr;
    MM_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  MM_CUDA_CHECK(cudaEventRecord(events_[used_], nullptr));
  return used_++;
}

std::vector<double> CudaEventClock::collect() {
  std::vector<double> seconds;
  if (used_ == 0) return seconds;
  MM_CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1]));
  seconds.reserve(used_);
  for (std::size_t i = 0; i < used_; ++i) {
    float ms = 0.0f;
    MM_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[0], events_[i]));
    seconds.push_back(static_cast<double>(ms) * 1e-3);
  }
  used_ = 0;
  return seconds;
}

std::unique_ptr<DeviceClock> CudaBackend::make_clock() {
  return std::make_unique<CudaEventClock>();
}

}  // namespace metamorph::cuda

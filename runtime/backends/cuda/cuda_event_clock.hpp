#pragma once
// The CUDA backend's DeviceClock: CUDA events recorded on the compute stream (the legacy default
// stream), reused from step to step; collect() waits for the last one and reads each event's time
// since the first.
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "runtime/core/device_clock.hpp"

namespace metamorph::cuda {

class CudaEventClock final : public DeviceClock {
 public:
  CudaEventClock() = default;
  ~CudaEventClock() override;
  CudaEventClock(const CudaEventClock&) = delete;
  CudaEventClock& operator=(const CudaEventClock&) = delete;

  std::size_t mark() override;
  std::vector<double> collect() override;

 private:
  std::vector<cudaEvent_t> events_;
  std::size_t used_ = 0;
};

}  // namespace metamorph::cuda

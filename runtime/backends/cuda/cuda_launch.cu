// Launch geometry that depends on the device: grids that fill it once.
#include <cuda_runtime.h>

#include <algorithm>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_check.hpp"

namespace metamorph::cuda {

unsigned CudaBackend::resident_blocks(const void* kernel, int threads, std::size_t shared) {
  constexpr std::size_t kDefaultShared = 48 * 1024;
  if (std::size_t& limit = shared_limits_[kernel]; shared > kDefaultShared && shared > limit) {
    MM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(shared)));
    limit = shared;
  }
  const auto key = std::make_tuple(kernel, threads, shared);
  if (const auto found = resident_blocks_.find(key); found != resident_blocks_.end())
    return found->second;
  int device = 0, sms = 0, per_sm = 0;
  MM_CUDA_CHECK(cudaGetDevice(&device));
  MM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  MM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared));
  const unsigned blocks = static_cast<unsigned>(std::max(per_sm, 1) * std::max(sms, 1));
  resident_blocks_.emplace(key, blocks);
  return blocks;
}

}  // namespace metamorph::cuda

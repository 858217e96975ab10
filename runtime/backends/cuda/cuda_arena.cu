#include <new>

#include "runtime/backends/cuda/cuda_arena.hpp"
#include "runtime/backends/cuda/cuda_check.hpp"

namespace metamorph::cuda {

CudaArena::~CudaArena() {
  // Never throws from a destructor: a failed free at exit is not worth terminating for.
  for (auto& [size, blocks] : free_blocks_)
    for (void* ptr : blocks) free_block(ptr);
}

void CudaArena::free_block(void* ptr) const {
  if (memory_ == Memory::device)
    cudaFree(ptr);
  else
    cudaFreeHost(ptr);
}

std::size_t CudaArena::cached_bytes() const {
  std::lock_guard lock(cache_mutex_);
  return cached_;
}

void CudaArena::empty_cache() {
  std::lock_guard lock(cache_mutex_);
  for (auto& [size, blocks] : free_blocks_)
    for (void* ptr : blocks)
      MM_CUDA_CHECK(memory_ == Memory::device ? cudaFree(ptr) : cudaFreeHost(ptr));
  free_blocks_.clear();
  cached_ = 0;
}

void* CudaArena::obtain(std::size_t size) {
  {
    std::lock_guard lock(cache_mutex_);
    auto it = free_blocks_.find(size);
    if (it != free_blocks_.end() && !it->second.empty()) {
      void* ptr = it->second.back();
      it->second.pop_back();
      cached_ -= size;
      return ptr;
    }
  }
  void* ptr = nullptr;
  auto get = [&] {
    return memory_ == Memory::device ? cudaMalloc(&ptr, size) : cudaMallocHost(&ptr, size);
  };
  cudaError_t status = get();
  if (status == cudaErrorMemoryAllocation) {
    // Cached blocks of other sizes may be what is missing: return them and try once more.
    cudaGetLastError();
    empty_cache();
    status = get();
  }
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw std::bad_alloc();
  }
  MM_CUDA_CHECK(status);
  return ptr;
}

void CudaArena::give_back(void* ptr, std::size_t size) {
  std::lock_guard lock(cache_mutex_);
  free_blocks_[size].push_back(ptr);
  cached_ += size;
}

}  // namespace metamorph::cuda

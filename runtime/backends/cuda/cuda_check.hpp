#pragma once
// Every CUDA runtime and cuBLASLt call is checked; a failure is a std::runtime_error naming the
// call, the error and where it happened (a driver or device fault is not the user's input).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <stdexcept>

#include "runtime/core/error.hpp"

namespace metamorph::cuda {

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess)
    throw std::runtime_error(concat(file, ":", line, ": ", what, ": ", cudaGetErrorString(status)));
}

inline void check_cublas(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(
        concat(file, ":", line, ": ", what, ": cuBLAS status ", static_cast<int>(status)));
}

}  // namespace metamorph::cuda

#define MM_CUDA_CHECK(call) ::metamorph::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define MM_CUBLAS_CHECK(call) ::metamorph::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// After each kernel launch: a bad launch configuration shows up here, not at the next sync.
#define MM_CUDA_CHECK_LAUNCH() \
  ::metamorph::cuda::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

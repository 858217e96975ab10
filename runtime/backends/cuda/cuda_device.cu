#include <cuda_runtime.h>

#include <cstdio>

#include "runtime/backends/cuda/cuda_device.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

std::string describe_device(int index) {
  cudaDeviceProp prop{};
  const cudaError_t status = cudaGetDeviceProperties(&prop, index);
  if (status != cudaSuccess) return cudaGetErrorString(status);
  char size[32];
  std::snprintf(size, sizeof size, "%.1f GiB",
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return std::string(prop.name) + ", sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " + size;
}

void set_device(int index) {
  const cudaError_t status = cudaSetDevice(index);
  require(status == cudaSuccess, "cannot use GPU ", index, ": ", cudaGetErrorString(status));
}

}  // namespace metamorph::cuda

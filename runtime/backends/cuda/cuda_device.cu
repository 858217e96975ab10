#include <cuda_runtime.h>

#include <cstdio>

#include "runtime/backends/cuda/cuda_device.hpp"

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
  char line[256];
  std::snprintf(line, sizeof line, "%s, sm_%d%d, %.1f GiB", prop.name, prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return line;
}

}  // namespace metamorph::cuda

#include "runtime/train/compute_device.hpp"

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

#ifdef METAMORPH_HAVE_CUDA
#include "runtime/backends/cuda/cuda_arena.hpp"
#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_device.hpp"
#endif

namespace metamorph {

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  throw InputError(concat("--device '", name, "'; valid: cpu, cuda"));
}

ComputeDevice make_compute_device(Device device) {
  ComputeDevice d;
  if (device == Device::cpu) {
    d.arena = std::make_unique<Arena>();
    d.backend = std::make_unique<CpuBackend>(*d.arena);
    return d;
  }
#ifdef METAMORPH_HAVE_CUDA
  require(cuda::device_count() > 0, "--device cuda: no CUDA GPU is visible (",
          cuda::describe_device(0), "); use --device cpu");
  d.arena = std::make_unique<cuda::CudaArena>();
  d.backend = std::make_unique<cuda::CudaBackend>(*d.arena);
  return d;
#else
  throw InputError(
      "--device cuda: this build has no CUDA backend (configure with nvcc on the PATH and "
      "-DMETAMORPH_CUDA=ON); use --device cpu");
#endif
}

}  // namespace metamorph

#include "runtime/train/compute_device.hpp"

#include <cstdlib>

#include "parallel/mpi_communicator.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

#ifdef METAMORPH_HAVE_CUDA
#include "parallel/nccl_communicator.hpp"
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

ComputeDevice make_compute_device(Device device, int local_rank,
                                  [[maybe_unused]] bool deterministic,
                                  [[maybe_unused]] int expert_streams) {
  ComputeDevice d;
  if (device == Device::cpu) {
    d.arena = std::make_unique<Arena>();
    d.backend = std::make_unique<CpuBackend>(*d.arena);
    return d;
  }
#ifdef METAMORPH_HAVE_CUDA
  const int count = cuda::device_count();
  require(count > 0, "--device cuda: no CUDA GPU is visible (", cuda::describe_device(0),
          "); use --device cpu");
  require(local_rank < count, "--device cuda: rank ", local_rank, " on this node has no GPU of ",
          "its own (", count, " visible); start at most ", count, " ranks per node");
  // Before anything allocates: the arena, the backend's handles and NCCL bind to this device.
  cuda::set_device(local_rank);
  d.arena = std::make_unique<cuda::CudaArena>();
  d.backend = std::make_unique<cuda::CudaBackend>(*d.arena, deterministic, expert_streams);
  return d;
#else
  throw InputError(
      "--device cuda: this build has no CUDA backend (configure with nvcc on the PATH and "
      "-DMETAMORPH_CUDA=ON); use --device cpu");
#endif
}

int node_local_rank() {
  // Set by Open MPI's mpirun for every rank it starts.
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  if (local == nullptr) return 0;
  char* end = nullptr;
  const long rank = std::strtol(local, &end, 10);
  require(end != local && *end == '\0' && rank >= 0, "OMPI_COMM_WORLD_LOCAL_RANK='", local,
          "' is not a rank index");
  return static_cast<int>(rank);
}

std::unique_ptr<Communicator> device_world(std::unique_ptr<Communicator> world, Device device) {
  if (device == Device::cpu || world == nullptr) return world;
#ifdef METAMORPH_HAVE_CUDA
  auto* mpi = dynamic_cast<MpiCommunicator*>(world.get());
  MM_ASSERT(mpi != nullptr, "the world communicator of a GPU run must be an MPI one");
  world.release();
  return NcclCommunicator::create(std::unique_ptr<MpiCommunicator>(mpi));
#else
  throw InputError("--device cuda: this build has no CUDA backend; use --device cpu");
#endif
}

}  // namespace metamorph

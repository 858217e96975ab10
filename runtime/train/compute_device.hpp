#pragma once
// The backend a run computes on: the CPU reference, or one CUDA GPU when this build has the
// CUDA backend and a GPU is visible.
#include <memory>
#include <string>

#include "parallel/communicator.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

// "cpu" or "cuda"; throws InputError naming the valid ones.
Device parse_device(const std::string& name);

// Owns a backend and its arena (device memory for CUDA).
struct ComputeDevice {
  std::unique_ptr<Arena> arena;
  std::unique_ptr<Backend> backend;
};

// The CPU backend, or the CUDA backend on GPU `local_rank` (the rank's index among the ranks of
// its node: one GPU per rank). Device::cuda throws InputError (exit 2) when this build has no
// CUDA backend, no GPU is visible or this rank has none of its own, saying which.
// `deterministic` false lets the CUDA backend use float atomics where they are faster (the CPU
// backend is deterministic either way). `expert_streams`: the CUDA streams the experts'
// weight-gradient GEMMs run on at once (CudaBackend::set_expert_streams, default its
// kDefaultExpertStreams); the CPU backend ignores it.
ComputeDevice make_compute_device(Device device, int local_rank = 0, bool deterministic = true,
                                  int expert_streams = 4);

// This rank's index among the ranks on its node (0 outside mpirun).
int node_local_rank();

// The world communicator of a run on `device`: `world` itself on the CPU; on GPUs an NCCL
// communicator over the same ranks, whose groups move GPU tensors over NCCL and host tensors
// (scalars, counts) over MPI. Call after make_compute_device (NCCL binds to the current GPU).
std::unique_ptr<Communicator> device_world(std::unique_ptr<Communicator> world, Device device);

}  // namespace metamorph

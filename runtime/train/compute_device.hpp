#pragma once
// The backend a run computes on: the CPU reference, or one CUDA GPU when this build has the
// CUDA backend and a GPU is visible.
#include <memory>
#include <string>

#include "runtime/core/backend.hpp"

namespace metamorph {

// "cpu" or "cuda"; throws InputError naming the valid ones.
Device parse_device(const std::string& name);

// Owns a backend and its arena (device memory for CUDA).
struct ComputeDevice {
  std::unique_ptr<Arena> arena;
  std::unique_ptr<Backend> backend;
};

// The CPU backend, or the CUDA backend on GPU 0. Device::cuda throws InputError (exit 2) when
// this build has no CUDA backend or no GPU is visible, saying which.
ComputeDevice make_compute_device(Device device);

}  // namespace metamorph

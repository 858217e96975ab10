#include <iostream>

#include "launch/cli/command.hpp"
#include "launch/version.hpp"
#ifdef METAMORPH_HAVE_CUDA
#include "runtime/backends/cuda/cuda_device.hpp"
#endif

namespace metamorph::cli {

Command version_command() {
  return {"version",
          "print the version, the build's backends and the visible GPUs",
          nullptr,
          {},
          [](const po::variables_map&) {
            std::cout << "metamorph " << kVersion << " (" << kGitRevision << ")\n";
#ifdef METAMORPH_HAVE_CUDA
            const int gpus = cuda::device_count();
            std::cout << "backends: cpu, cuda\n";
            std::cout << "gpus: " << gpus << "\n";
            for (int i = 0; i < gpus; ++i)
              std::cout << "  " << i << ": " << cuda::describe_device(i) << "\n";
#else
            std::cout << "backends: cpu\n";
#endif
            return 0;
          }};
}

}  // namespace metamorph::cli

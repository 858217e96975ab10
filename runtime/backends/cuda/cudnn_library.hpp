#pragma once
// cuDNN, loaded at first use with dlopen and never linked: a binary without cuDNN runs exactly as
// before (the attention falls back to this backend's own kernels), and the cuDNN that happens to
// be installed (any 9.x, e.g. the one inside PyTorch's wheel) is the one used. Only the dozen
// backend-API entry points the fused attention needs are looked up. The header supplies types
// and enum values only; METAMORPH_HAVE_CUDNN_HEADERS is 0 where the build found no cuDNN header,
// and then the library always reports itself unavailable.
#include <cstddef>
#include <stdexcept>
#include <string>

#if __has_include(<cudnn_graph.h>)
#include <cudnn_graph.h>
#define METAMORPH_HAVE_CUDNN_HEADERS 1
#else
#define METAMORPH_HAVE_CUDNN_HEADERS 0
#endif

namespace metamorph::cuda {

// A cuDNN call that failed: the call, cuDNN's status string and our step.
class CudnnError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Environment switches, read once: METAMORPH_CUDNN=0 keeps every attention call on our kernels;
// METAMORPH_CUDNN_BWD=0 keeps only the backward there; METAMORPH_CUDNN_LOG=1 prints why cuDNN is
// not used (once per shape) and each graph step, and switches on cuDNN's own warnings log;
// METAMORPH_CUDNN_PATH=/path/libcudnn.so.9 loads that file instead of searching;
// METAMORPH_CUDNN_CONFIG=N tries the heuristics' engine config N of every graph first (for
// comparing engines; -1 when unset, InputError when not a non-negative integer).
bool cudnn_allowed_by_env();
bool cudnn_backward_allowed_by_env();
bool cudnn_log_enabled();
int cudnn_preferred_config();

#if METAMORPH_HAVE_CUDNN_HEADERS
struct CudnnLibrary {
  decltype(&cudnnCreate) create = nullptr;
  decltype(&cudnnDestroy) destroy = nullptr;
  decltype(&cudnnSetStream) set_stream = nullptr;
  decltype(&cudnnGetVersion) get_version = nullptr;
  decltype(&cudnnGetErrorString) error_string = nullptr;
  decltype(&cudnnBackendCreateDescriptor) create_descriptor = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) destroy_descriptor = nullptr;
  decltype(&cudnnBackendSetAttribute) set_attribute = nullptr;
  decltype(&cudnnBackendGetAttribute) get_attribute = nullptr;
  decltype(&cudnnBackendFinalize) finalize = nullptr;
  decltype(&cudnnBackendExecute) execute = nullptr;
  std::size_t version = 0;  // cudnnGetVersion(): major * 10000 + minor * 100 + patch
  std::string path;         // the file dlopen found

  // Throws CudnnError naming `what` when status is not success.
  void check(cudnnStatus_t status, const std::string& what) const;
};
#else
struct CudnnLibrary {
  std::size_t version = 0;
  std::string path;
};
#endif

// The process's cuDNN, loaded on the first call (thread-safe), or nullptr when it cannot be
// loaded; cudnn_load_error() then says why. The library stays loaded until the process ends.
const CudnnLibrary* cudnn_library();
const std::string& cudnn_load_error();

}  // namespace metamorph::cuda

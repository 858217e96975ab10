#include "runtime/backends/cuda/cudnn_library.hpp"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "runtime/core/error.hpp"

namespace metamorph::cuda {
namespace {

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

struct Loaded {
  std::unique_ptr<CudnnLibrary> library;
  std::string error;
};

#if METAMORPH_HAVE_CUDNN_HEADERS
template <class Fn>
bool look_up(void* handle, const char* name, Fn& fn, std::string& error) {
  fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (fn == nullptr) error = concat("libcudnn has no symbol ", name);
  return fn != nullptr;
}

Loaded load() {
  Loaded result;
  if (!cudnn_allowed_by_env()) {
    result.error = "METAMORPH_CUDNN=0";
    return result;
  }
  // cuDNN reads its logging variables when it loads; METAMORPH_CUDNN_LOG=1 asks for warnings
  // and errors on stderr unless the caller chose other settings.
  if (cudnn_log_enabled()) {
    setenv("CUDNN_LOGLEVEL_DBG", "2", 0);
    setenv("CUDNN_LOGDEST_DBG", "stderr", 0);
  }
  void* handle = nullptr;
  std::string tried;
  // METAMORPH_CUDNN_PATH names the file outright; otherwise the loader's search path decides.
  const char* explicit_path = std::getenv("METAMORPH_CUDNN_PATH");
  for (const char* name : {explicit_path, "libcudnn.so.9", "libcudnn.so"}) {
    if (name == nullptr || *name == '\0') continue;
    handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) break;
    const char* why = dlerror();
    tried += concat(tried.empty() ? "" : "; ", why != nullptr ? why : name);
  }
  if (handle == nullptr) {
    result.error = concat("dlopen failed (", tried, ")");
    return result;
  }
  auto lib = std::make_unique<CudnnLibrary>();
  std::string& e = result.error;
  const bool found = look_up(handle, "cudnnCreate", lib->create, e) &&
                     look_up(handle, "cudnnDestroy", lib->destroy, e) &&
                     look_up(handle, "cudnnSetStream", lib->set_stream, e) &&
                     look_up(handle, "cudnnGetVersion", lib->get_version, e) &&
                     look_up(handle, "cudnnGetErrorString", lib->error_string, e) &&
                     look_up(handle, "cudnnBackendCreateDescriptor", lib->create_descriptor, e) &&
                     look_up(handle, "cudnnBackendDestroyDescriptor", lib->destroy_descriptor, e) &&
                     look_up(handle, "cudnnBackendSetAttribute", lib->set_attribute, e) &&
                     look_up(handle, "cudnnBackendGetAttribute", lib->get_attribute, e) &&
                     look_up(handle, "cudnnBackendFinalize", lib->finalize, e) &&
                     look_up(handle, "cudnnBackendExecute", lib->execute, e);
  if (!found)
    return result;  // the handle stays open: harmless, and dlclose could unload CUDA state
  lib->version = lib->get_version();
  // The graphs here are written for the 9.x backend API (attribute names and by-value scalars).
  if (lib->version < 90000 || lib->version >= 100000) {
    e = concat("cuDNN version ", lib->version, " is not 9.x");
    return result;
  }
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(lib->create), &info) != 0 && info.dli_fname != nullptr)
    lib->path = info.dli_fname;
  if (cudnn_log_enabled())
    std::fprintf(stderr, "metamorph: cuDNN %zu loaded from %s\n", lib->version, lib->path.c_str());
  result.library = std::move(lib);
  return result;
}
#else
Loaded load() {
  Loaded result;
  result.error = "built without cuDNN headers (cudnn_graph.h)";
  return result;
}
#endif

const Loaded& loaded() {
  static const Loaded instance = load();  // once per process; dlopen is process-wide anyway
  return instance;
}

}  // namespace

bool cudnn_allowed_by_env() {
  static const bool allowed = !env_is("METAMORPH_CUDNN", "0");
  return allowed;
}

bool cudnn_backward_allowed_by_env() {
  static const bool allowed = !env_is("METAMORPH_CUDNN_BWD", "0");
  return allowed;
}

bool cudnn_log_enabled() {
  static const bool enabled = env_is("METAMORPH_CUDNN_LOG", "1");
  return enabled;
}

int cudnn_preferred_config() {
  const char* text = std::getenv("METAMORPH_CUDNN_CONFIG");
  if (text == nullptr || *text == '\0') return -1;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  require(*end == '\0' && value >= 0 && value < 1000, "METAMORPH_CUDNN_CONFIG '", text,
          "' must be an engine config index (a non-negative integer)");
  return static_cast<int>(value);
}

const CudnnLibrary* cudnn_library() {
  return loaded().library.get();
}

const std::string& cudnn_load_error() {
  return loaded().error;
}

#if METAMORPH_HAVE_CUDNN_HEADERS
void CudnnLibrary::check(cudnnStatus_t status, const std::string& what) const {
  if (status != CUDNN_STATUS_SUCCESS)
    throw CudnnError(
        concat(what, ": ", error_string(status), " (status ", static_cast<int>(status), ")"));
}
#endif

}  // namespace metamorph::cuda

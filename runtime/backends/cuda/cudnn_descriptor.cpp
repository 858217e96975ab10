#include "runtime/backends/cuda/cudnn_descriptor.hpp"

#if METAMORPH_HAVE_CUDNN_HEADERS
#include <utility>

#include "runtime/core/error.hpp"

namespace metamorph::cuda {

CudnnDescriptor::CudnnDescriptor(const CudnnLibrary& lib, cudnnBackendDescriptorType_t type,
                                 std::string role)
    : lib_(lib), role_(std::move(role)) {
  lib_.check(lib_.create_descriptor(type, &desc_),
             concat("cudnnBackendCreateDescriptor(", static_cast<int>(type), ") for ", role_));
}

CudnnDescriptor::~CudnnDescriptor() {
  if (desc_ != nullptr) lib_.destroy_descriptor(desc_);
}

CudnnDescriptor& CudnnDescriptor::set(cudnnBackendAttributeName_t name,
                                      cudnnBackendAttributeType_t type, std::int64_t count,
                                      const void* values) {
  lib_.check(lib_.set_attribute(desc_, name, type, count, values),
             concat(role_, ": set attribute ", static_cast<int>(name)));
  return *this;
}

CudnnDescriptor& CudnnDescriptor::set_int64(cudnnBackendAttributeName_t name, std::int64_t value) {
  return set(name, CUDNN_TYPE_INT64, 1, &value);
}

CudnnDescriptor& CudnnDescriptor::set_int64s(cudnnBackendAttributeName_t name,
                                             const std::vector<std::int64_t>& values) {
  return set(name, CUDNN_TYPE_INT64, static_cast<std::int64_t>(values.size()), values.data());
}

CudnnDescriptor& CudnnDescriptor::set_bool(cudnnBackendAttributeName_t name, bool value) {
  return set(name, CUDNN_TYPE_BOOLEAN, 1, &value);
}

CudnnDescriptor& CudnnDescriptor::set_data_type(cudnnBackendAttributeName_t name,
                                                cudnnDataType_t value) {
  return set(name, CUDNN_TYPE_DATA_TYPE, 1, &value);
}

CudnnDescriptor& CudnnDescriptor::set_desc(cudnnBackendAttributeName_t name,
                                           const CudnnDescriptor& value) {
  cudnnBackendDescriptor_t raw = value.get();
  return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
}

CudnnDescriptor& CudnnDescriptor::set_descs(cudnnBackendAttributeName_t name,
                                            const std::vector<cudnnBackendDescriptor_t>& values) {
  return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<std::int64_t>(values.size()),
             values.data());
}

CudnnDescriptor& CudnnDescriptor::set_handle(cudnnBackendAttributeName_t name,
                                             cudnnHandle_t handle) {
  return set(name, CUDNN_TYPE_HANDLE, 1, &handle);
}

void CudnnDescriptor::finalize() {
  lib_.check(lib_.finalize(desc_), concat(role_, ": finalize"));
}

std::int64_t CudnnDescriptor::get_int64(cudnnBackendAttributeName_t name) const {
  std::int64_t value = 0, count = 0;
  lib_.check(lib_.get_attribute(desc_, name, CUDNN_TYPE_INT64, 1, &count, &value),
             concat(role_, ": get attribute ", static_cast<int>(name)));
  return value;
}

}  // namespace metamorph::cuda
#endif

#pragma once
// One cuDNN backend descriptor, owned (destroyed with the object), with typed attribute setters.
// Every failure is a CudnnError naming the descriptor's role and the attribute, so a graph that
// cuDNN rejects says where.
#include "runtime/backends/cuda/cudnn_library.hpp"

#if METAMORPH_HAVE_CUDNN_HEADERS
#include <cstdint>
#include <string>
#include <vector>

namespace metamorph::cuda {

class CudnnDescriptor {
 public:
  CudnnDescriptor(const CudnnLibrary& lib, cudnnBackendDescriptorType_t type, std::string role);
  ~CudnnDescriptor();
  CudnnDescriptor(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(const CudnnDescriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return desc_; }
  const std::string& role() const { return role_; }

  CudnnDescriptor& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                       std::int64_t count, const void* values);
  CudnnDescriptor& set_int64(cudnnBackendAttributeName_t name, std::int64_t value);
  CudnnDescriptor& set_int64s(cudnnBackendAttributeName_t name,
                              const std::vector<std::int64_t>& values);
  CudnnDescriptor& set_bool(cudnnBackendAttributeName_t name, bool value);
  CudnnDescriptor& set_data_type(cudnnBackendAttributeName_t name, cudnnDataType_t value);
  CudnnDescriptor& set_desc(cudnnBackendAttributeName_t name, const CudnnDescriptor& value);
  CudnnDescriptor& set_descs(cudnnBackendAttributeName_t name,
                             const std::vector<cudnnBackendDescriptor_t>& values);
  CudnnDescriptor& set_handle(cudnnBackendAttributeName_t name, cudnnHandle_t handle);
  void finalize();

  // A single int64 attribute (e.g. an execution plan's workspace size).
  std::int64_t get_int64(cudnnBackendAttributeName_t name) const;

 private:
  const CudnnLibrary& lib_;
  cudnnBackendDescriptor_t desc_ = nullptr;
  std::string role_;
};

}  // namespace metamorph::cuda
#endif

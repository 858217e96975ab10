#include <cstring>
#include <vector>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_check.hpp"
#include "runtime/backends/cuda/cuda_transfer.hpp"

namespace metamorph::cuda {

std::uint16_t float_to_bf16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0)
    return static_cast<std::uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

float bf16_to_float(std::uint16_t value) {
  const std::uint32_t bits = static_cast<std::uint32_t>(value) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

namespace {
bool convertible(DType from, DType to) {
  return from == to || (from == DType::f32 && to == DType::bf16) ||
         (from == DType::bf16 && to == DType::f32);
}

// Host-side conversion of n elements between f32 and bf16 (or a plain copy).
void convert(const void* src, DType from, void* dst, DType to, std::int64_t n) {
  if (from == to) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * dtype_size(from));
  } else if (from == DType::f32) {
    const auto* s = static_cast<const float*>(src);
    auto* d = static_cast<std::uint16_t*>(dst);
    for (std::int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(s[i]);
  } else {
    const auto* s = static_cast<const std::uint16_t*>(src);
    auto* d = static_cast<float*>(dst);
    for (std::int64_t i = 0; i < n; ++i) d[i] = bf16_to_float(s[i]);
  }
}
}  // namespace

Tensor to_device(const Tensor& host, Arena& device_arena, DType dtype) {
  MM_ASSERT(host.device() == Device::cpu, "to_device of a device tensor");
  MM_ASSERT(convertible(host.dtype(), dtype), "to_device from ", dtype_name(host.dtype()), " to ",
            dtype_name(dtype));
  Tensor out = Tensor::empty(host.shape(), dtype, device_arena, Device::cuda);
  if (out.numel() == 0) return out;
  if (dtype == host.dtype()) {
    MM_CUDA_CHECK(cudaMemcpy(out.raw(), host.raw(), out.bytes(), cudaMemcpyHostToDevice));
  } else {
    std::vector<char> staging(out.bytes());
    convert(host.raw(), host.dtype(), staging.data(), dtype, host.numel());
    MM_CUDA_CHECK(cudaMemcpy(out.raw(), staging.data(), out.bytes(), cudaMemcpyHostToDevice));
  }
  return out;
}

Tensor to_host(const Tensor& device, Arena& host_arena, DType dtype) {
  MM_ASSERT(device.device() == Device::cuda, "to_host of a host tensor");
  MM_ASSERT(convertible(device.dtype(), dtype), "to_host from ", dtype_name(device.dtype()), " to ",
            dtype_name(dtype));
  Tensor out = Tensor::empty(device.shape(), dtype, host_arena);
  if (out.numel() == 0) return out;
  if (dtype == device.dtype()) {
    MM_CUDA_CHECK(cudaMemcpy(out.raw(), device.raw(), out.bytes(), cudaMemcpyDeviceToHost));
  } else {
    std::vector<char> staging(device.bytes());
    MM_CUDA_CHECK(cudaMemcpy(staging.data(), device.raw(), device.bytes(), cudaMemcpyDeviceToHost));
    convert(staging.data(), device.dtype(), out.raw(), dtype, device.numel());
  }
  return out;
}

Tensor CudaBackend::to_host(const Tensor& x, DType dtype) {
  return cuda::to_host(x, host_arena_, dtype);
}

Tensor CudaBackend::from_host(const Tensor& host, DType dtype) {
  return cuda::to_device(host, arena_, dtype);
}

}  // namespace metamorph::cuda

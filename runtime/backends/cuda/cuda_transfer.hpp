#pragma once
// Host <-> device copies, used by tests, checkpoints and the runtime. bf16 <-> f32 conversion
// happens on the host side of the copy (round to nearest even), so a host f32 tensor can be
// uploaded as a bf16 device tensor and read back as f32.
#include "runtime/core/tensor.hpp"

namespace metamorph::cuda {

// A device tensor in `device_arena` holding `host` converted to `dtype` (f32 <-> bf16 only;
// other dtypes must match).
Tensor to_device(const Tensor& host, Arena& device_arena, DType dtype);
inline Tensor to_device(const Tensor& host, Arena& device_arena) {
  return to_device(host, device_arena, host.dtype());
}
// A host tensor in `host_arena` holding `device` converted to `dtype`.
Tensor to_host(const Tensor& device, Arena& host_arena, DType dtype);
inline Tensor to_host(const Tensor& device, Arena& host_arena) {
  return to_host(device, host_arena, device.dtype());
}

// bf16 <-> f32 on the host, round to nearest even (NaN stays NaN).
std::uint16_t float_to_bf16(float value);
float bf16_to_float(std::uint16_t value);

}  // namespace metamorph::cuda

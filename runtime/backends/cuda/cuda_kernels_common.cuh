#pragma once
// Device helpers shared by the kernel files: f32/bf16 loads and stores, dtype dispatch, launch
// geometry and deterministic block reductions.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "runtime/backends/cuda/cuda_check.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float x) {
  return x;
}
__device__ __forceinline__ float to_float(bf16 x) {
  return __bfloat162float(x);
}
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// Calls fn(T{}) with T = float or bf16 for a floating tensor's dtype.
template <class Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  if (dtype == DType::f32)
    fn(float{});
  else if (dtype == DType::bf16)
    fn(bf16{});
  else
    MM_ASSERT(false, op, " wants an f32 or bf16 tensor, got ", dtype_name(dtype));
}

template <class T>
const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.raw());
}
template <class T>
T* mptr(Tensor& t) {
  return static_cast<T*>(t.raw());
}

inline void check_on_device(const Tensor& t, const char* op) {
  MM_ASSERT(t.device() == Device::cuda, op, " got a host tensor ", shape_string(t.shape()));
}
template <class... Tensors>
void check_all_on_device(const char* op, const Tensors&... tensors) {
  (check_on_device(tensors, op), ...);
}

constexpr int kThreads = 256;
// Grid for a grid-stride loop over n elements: enough blocks to fill an H100 several times.
inline unsigned grid_for(std::int64_t n, int threads = kThreads) {
  const std::int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// Sum over the block in a fixed tree order (same bits every run). Every thread gets the result.
// `scratch` holds blockDim.x / 32 values.
template <class T>
__device__ T block_sum(T value, T* scratch) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = blockDim.x / 32;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

__device__ __forceinline__ float block_max(float value, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, scratch[w]);
  return m;
}

}  // namespace metamorph::cuda

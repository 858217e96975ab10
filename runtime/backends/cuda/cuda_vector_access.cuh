#pragma once
// Wide (8- and 16-byte) loads and stores of f32/bf16 runs for the memory-bound kernels, and the
// grid-stride loop that walks a tensor in runs of V elements with a one-element tail.
//
// A warp that loads 2-byte bf16 values one at a time moves 64 bytes per instruction and keeps few
// bytes in flight; H100-class memory wants every thread to have tens of bytes outstanding. The
// helpers move V consecutive elements per call as 16-byte (or, for 4 bf16, 8-byte) words and
// convert them to f32 registers; with V = 1 they are plain scalar accesses, so one kernel body
// serves both the vector path and the fallback for odd sizes or unaligned pointers.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

// Elements of T in one 16-byte word: 4 f32, 8 bf16.
template <class T>
constexpr int kPerWord16 = static_cast<int>(16 / sizeof(T));

// True when every pointer is 16-byte aligned: the condition (with a length that is a multiple of
// the run) for the vector path.
template <class... Ptrs>
bool aligned16(const Ptrs*... ptrs) {
  return ((reinterpret_cast<std::uintptr_t>(ptrs) % 16 == 0) && ...);
}

namespace vector_detail {

// The f32 values of one 32-bit word: one f32, or two bf16 (the first element in the low half).
template <class T>
__device__ __forceinline__ void unpack_word(std::uint32_t word, float* out) {
  if constexpr (std::is_same_v<T, float>) {
    out[0] = __uint_as_float(word);
  } else {
    out[0] = __uint_as_float(word << 16);  // bf16 -> f32 is exact: the bits move up
    out[1] = __uint_as_float(word & 0xffff0000u);
  }
}

template <class T>
__device__ __forceinline__ std::uint32_t pack_word(const float* in) {
  if constexpr (std::is_same_v<T, float>) {
    return __float_as_uint(in[0]);
  } else {
    const std::uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(in[0]));
    const std::uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(in[1]));
    return lo | (hi << 16);
  }
}

}  // namespace vector_detail

// v[0..V) = p[0..V) as f32. For V > 1, p must be aligned to the access width (16 bytes, or 8 for
// a run of 8 bytes); V * sizeof(T) must then be 8 or a multiple of 16.
template <int V, class T>
__device__ __forceinline__ void load_run(const T* p, float (&v)[V]) {
  constexpr int bytes = V * static_cast<int>(sizeof(T));
  constexpr int per_word = 4 / static_cast<int>(sizeof(T));
  if constexpr (V == 1) {
    v[0] = to_float(*p);
  } else if constexpr (bytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < bytes / 16; ++k) {
      const uint4 w = reinterpret_cast<const uint4*>(p)[k];
      float* o = v + k * 4 * per_word;
      vector_detail::unpack_word<T>(w.x, o);
      vector_detail::unpack_word<T>(w.y, o + per_word);
      vector_detail::unpack_word<T>(w.z, o + 2 * per_word);
      vector_detail::unpack_word<T>(w.w, o + 3 * per_word);
    }
  } else {
    static_assert(bytes == 8, "load_run moves 8 bytes or multiples of 16");
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    vector_detail::unpack_word<T>(w.x, v);
    vector_detail::unpack_word<T>(w.y, v + per_word);
  }
}

// p[0..V) = v[0..V), rounded to T (round to nearest even for bf16, as from_float).
template <int V, class T>
__device__ __forceinline__ void store_run(T* p, const float (&v)[V]) {
  constexpr int bytes = V * static_cast<int>(sizeof(T));
  constexpr int per_word = 4 / static_cast<int>(sizeof(T));
  if constexpr (V == 1) {
    *p = from_float<T>(v[0]);
  } else if constexpr (bytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < bytes / 16; ++k) {
      const float* in = v + k * 4 * per_word;
      uint4 w;
      w.x = vector_detail::pack_word<T>(in);
      w.y = vector_detail::pack_word<T>(in + per_word);
      w.z = vector_detail::pack_word<T>(in + 2 * per_word);
      w.w = vector_detail::pack_word<T>(in + 3 * per_word);
      reinterpret_cast<uint4*>(p)[k] = w;
    }
  } else {
    static_assert(bytes == 8, "store_run moves 8 bytes or multiples of 16");
    uint2 w;
    w.x = vector_detail::pack_word<T>(v);
    w.y = vector_detail::pack_word<T>(v + per_word);
    *reinterpret_cast<uint2*>(p) = w;
  }
}

// Elements per run of the elementwise kernels: 16 bytes of bf16, two 16-byte words of f32.
constexpr int kRun = 8;

// Grid-stride loop over n elements: body(i, std::integral_constant<int, W>) handles elements
// [i, i + W). With `vectorised`, whole runs of kRun go first and the last n % kRun elements one by
// one; otherwise every element goes one by one.
template <class Body>
__device__ __forceinline__ void for_each_run(std::int64_t n, bool vectorised, Body body) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  const std::int64_t first = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  const std::int64_t runs = vectorised ? n / kRun : 0;
  for (std::int64_t r = first; r < runs; r += stride)
    body(r * kRun, std::integral_constant<int, kRun>{});
  for (std::int64_t i = runs * kRun + first; i < n; i += stride)
    body(i, std::integral_constant<int, 1>{});
}

// Grid for for_each_run: one run per thread where the grid allows.
inline unsigned grid_for_runs(std::int64_t n, bool vectorised) {
  return grid_for(vectorised ? std::max<std::int64_t>(n / kRun, n % kRun) : n);
}

}  // namespace metamorph::cuda

#pragma once
// The 16-byte run layout the RMSNorm kernels share (cuda_norm_warp.cu, cuda_norm_bulk.cu): a row
// is cut into runs of 8 elements (one 16-byte word of bf16, two of f32), each thread of a group of
// `Slots` threads (a warp's 32 lanes, or a block's threads) owning runs k * Slots + slot. The
// weight and the weight-gradient sums sit in shared memory permuted to match: run k, half h
// (elements 4h..4h+3) of slot t at float4 index (2k + h) * Slots + t, so that the group's 16-byte
// accesses touch consecutive banks.
#include <cstdint>

#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

constexpr int kRunElems = 8;  // elements per run

template <class X>
constexpr int kWordsPerRun = static_cast<int>(sizeof(X)) * kRunElems / 16;

template <class X>
__device__ __forceinline__ void unpack_run(const uint4 (&word)[kWordsPerRun<X>],
                                           float (&v)[kRunElems]) {
  constexpr int per_word = 4 / static_cast<int>(sizeof(X));
#pragma unroll
  for (int i = 0; i < kWordsPerRun<X>; ++i) {
    float* out = v + i * 4 * per_word;
    vector_detail::unpack_word<X>(word[i].x, out);
    vector_detail::unpack_word<X>(word[i].y, out + per_word);
    vector_detail::unpack_word<X>(word[i].z, out + 2 * per_word);
    vector_detail::unpack_word<X>(word[i].w, out + 3 * per_word);
  }
}

// The inverse of unpack_run: v rounded to X (to nearest even for bf16, as store_run rounds).
template <class X>
__device__ __forceinline__ void pack_run(const float (&v)[kRunElems],
                                         uint4 (&word)[kWordsPerRun<X>]) {
  constexpr int per_word = 4 / static_cast<int>(sizeof(X));
#pragma unroll
  for (int i = 0; i < kWordsPerRun<X>; ++i) {
    const float* in = v + i * 4 * per_word;
    word[i].x = vector_detail::pack_word<X>(in);
    word[i].y = vector_detail::pack_word<X>(in + per_word);
    word[i].z = vector_detail::pack_word<X>(in + 2 * per_word);
    word[i].w = vector_detail::pack_word<X>(in + 3 * per_word);
  }
}

// Run k of slot `slot` in the permuted shared layout.
template <int Slots>
__device__ __forceinline__ void load_shared_run(const float4* s, int k, int slot,
                                                float (&v)[kRunElems]) {
  const float4 a = s[(2 * k) * Slots + slot], b = s[(2 * k + 1) * Slots + slot];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
  v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

template <int Slots>
__device__ __forceinline__ void store_shared_run(float4* s, int k, int slot,
                                                 const float (&v)[kRunElems]) {
  s[(2 * k) * Slots + slot] = make_float4(v[0], v[1], v[2], v[3]);
  s[(2 * k + 1) * Slots + slot] = make_float4(v[4], v[5], v[6], v[7]);
}

// Column c's float index in the permuted layout.
template <int Slots>
__device__ __forceinline__ int permuted(int c) {
  const int r = c / kRunElems, j = c % kRunElems;
  return (((r / Slots) * 2 + j / 4) * Slots + r % Slots) * 4 + j % 4;
}

// The weight as f32 in the permuted layout, by all of the block's threads.
template <int Slots, class W>
__device__ void stage_weight(const W* w, int n, float4* w_s) {
  float* out = reinterpret_cast<float*>(w_s);
  for (int c = threadIdx.x; c < n; c += blockDim.x) out[permuted<Slots>(c)] = to_float(w[c]);
}

// Butterfly sum: every lane ends with the same bits (each step adds the same two values).
template <class T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

}  // namespace metamorph::cuda

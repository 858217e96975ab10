#pragma once
// Tensor-core building blocks of the attention kernels: mma.sync m16n8k16 (bf16 in, f32
// accumulate) and the fragment packing around it. Fragment layouts (PTX ISA, m16n8k16): lane =
// 4 * group + quad; A holds rows group and group + 8, columns 2 quad (+1) and 2 quad + 8 (+1); B
// holds rows (k) 2 quad (+1) and 2 quad + 8 (+1) of column group; C holds rows group and
// group + 8, columns 2 quad (+1).
#include <cstdint>

#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ void mma_bf16(float (&c)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two bf16 in one register, `lo` in the low half (the lower column of a fragment).
__device__ __forceinline__ std::uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}
__device__ __forceinline__ std::uint32_t pack(bf16 lo, bf16 hi) {
  const std::uint32_t l = *reinterpret_cast<const std::uint16_t*>(&lo);
  const std::uint32_t h = *reinterpret_cast<const std::uint16_t*>(&hi);
  return l | (h << 16);
}
__device__ __forceinline__ std::uint32_t load32(const bf16* p) {
  return *reinterpret_cast<const std::uint32_t*>(p);
}

// rows x D bf16 of a [*, rows_total, heads_total, D] tensor into shared memory rows of `stride`
// elements, in 16-byte vectors; zero past the end of the sequence.
template <int D>
__device__ void load_rows(bf16* tile, int rows, int stride, const bf16* base,
                          std::int64_t first_row, std::int64_t rows_total,
                          std::int64_t row_stride) {
  constexpr int vectors = D / 8;
  for (int e = threadIdx.x; e < rows * vectors; e += blockDim.x) {
    const int r = e / vectors, c = (e % vectors) * 8;
    const std::int64_t row = first_row + r;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (row < rows_total) value = *reinterpret_cast<const uint4*>(base + row * row_stride + c);
    *reinterpret_cast<uint4*>(tile + r * stride + c) = value;
  }
}

// Asynchronous global -> shared copies (cp.async, sm_80+): the next tile streams in while the
// current one is computed. `valid` false zero-fills the 16 bytes without reading global memory.
__device__ __forceinline__ void cp_async16(void* shared, const void* global, bool valid) {
  const auto addr = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(global),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* shared, const void* global, bool valid) {
  const auto addr = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(addr), "l"(global),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n");
}
// Waits until at most `pending` of this thread's committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// rows x D bf16 of one head of a [*, rows_total, heads, D] tensor (`base` points at row 0 of the
// head, rows `row_stride` elements apart) into shared rows of `stride` elements, by cp.async;
// rows past the end are zero. 32-bit offsets: the launcher checks rows_total * row_stride < 2^31.
template <int D>
__device__ __forceinline__ void load_rows_async(bf16* tile, int rows, int stride, const bf16* base,
                                                int first_row, int rows_total, int row_stride) {
  constexpr int vectors = D / 8;
  for (int e = threadIdx.x; e < rows * vectors; e += blockDim.x) {
    const int r = e / vectors, c = (e % vectors) * 8, row = first_row + r;
    const bool valid = row < rows_total;
    cp_async16(tile + r * stride + c, base + (valid ? row * row_stride + c : 0), valid);
  }
}

// The A fragment of rows [row0, row0 + 16) and columns [k0, k0 + 16) of a row-major shared tile,
// by one ldmatrix.x4: lanes 0-15 address rows 0-15 of the left 8 columns, lanes 16-31 of the right
// 8, which yields a[0..3] in the mma A order (rows 0-7 / 8-15 of the left, then the right half).
__device__ __forceinline__ void load_a_rows(std::uint32_t (&a)[4], const bf16* tile, int stride,
                                            int row0, int k0, int lane) {
  const bf16* p = tile + (row0 + lane % 16) * stride + k0 + (lane / 16) * 8;
  const auto addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
}

// B fragments for two adjacent 8-wide n-tiles of one 16-deep k-step, by ldmatrix (one
// instruction instead of four 32-bit or eight 16-bit shared loads). Rows are 16-byte aligned
// (strides of D + 8 bf16, columns at multiples of 8). b[0], b[1] belong to n-tile n0, b[2], b[3]
// to n-tile n0 + 8.
//
// load_b_rows: the tile is stored [n][k] (B^T row-major, e.g. K for S = Q K^T).
__device__ __forceinline__ void load_b_rows(std::uint32_t (&b)[4], const bf16* tile, int stride,
                                            int k0, int n0, int lane) {
  const int m = lane / 8, r = lane % 8;
  const bf16* p = tile + (n0 + (m / 2) * 8 + r) * stride + k0 + (m % 2) * 8;
  const auto addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(addr));
}
// load_b_cols: the tile is stored [k][n] (B row-major, e.g. V for O = P V); .trans transposes
// each 8x8 block on the way.
__device__ __forceinline__ void load_b_cols(std::uint32_t (&b)[4], const bf16* tile, int stride,
                                            int k0, int n0, int lane) {
  const int m = lane / 8, r = lane % 8;
  const bf16* p = tile + (k0 + (m % 2) * 8 + r) * stride + n0 + (m / 2) * 8;
  const auto addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(addr));
}

inline bool aligned16(const Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.raw()) % 16 == 0;
}

}  // namespace metamorph::cuda

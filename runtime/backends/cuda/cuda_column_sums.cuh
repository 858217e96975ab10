#pragma once
// Deterministic column sums for the weight and bias gradients: out[c] += sum over rows of a term,
// done in two passes without atomics. The first pass writes partial[chunk, c], one row per fixed
// chunk of rows (column_partial_kernel here, or a fused kernel such as RMSNorm's backward); the
// finish kernel adds the chunks in a fixed order. The chunking is a function of the row count
// alone, so the bits do not depend on the device.
#include <cstdint>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

constexpr std::int64_t kRowsPerChunk = 64;

inline std::int64_t row_chunks(std::int64_t rows) {
  return (rows + kRowsPerChunk - 1) / kRowsPerChunk;
}

// partial[chunk, c] = sum over the chunk's rows of term(r, c).
template <class Term>
__global__ void column_partial_kernel(Term term, std::int64_t rows, std::int64_t cols,
                                      float* partial) {
  const std::int64_t c = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  const std::int64_t r0 = blockIdx.y * kRowsPerChunk;
  const std::int64_t r1 = min(rows, r0 + kRowsPerChunk);
  float sum = 0.0f;
  for (std::int64_t r = r0; r < r1; ++r) sum += term(r, c);
  partial[blockIdx.y * cols + c] = sum;
}

// out[c] += sum_k partial[k, c]. A block owns 32 columns: warp w adds chunks w, w + 16, ... in
// order (one column per lane, coalesced rows), then the 16 warp sums are added in warp order.
// Sixteen warps: a width of 2048 gives only 64 blocks, and each warp's chain of L2 loads is the
// kernel's time.
constexpr int kFinishWarps = 16;

template <class Out>
__global__ void __launch_bounds__(kFinishWarps * 32)
    column_finish_kernel(const float* partial, std::int64_t chunks, std::int64_t cols, Out* out) {
  __shared__ float warp_sums[kFinishWarps][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t c = blockIdx.x * std::int64_t{32} + lane;
  float sum = 0.0f;
  // Unrolled so that several loads are in flight (partial is in L2, each load waits its latency);
  // the additions keep their order.
  if (c < cols)
#pragma unroll 8
    for (std::int64_t k = warp; k < chunks; k += kFinishWarps) sum += partial[k * cols + c];
  warp_sums[warp][lane] = sum;
  __syncthreads();
  if (warp != 0 || c >= cols) return;
  float total = 0.0f;
  for (int w = 0; w < kFinishWarps; ++w) total += warp_sums[w][lane];
  out[c] = from_float<Out>(to_float(out[c]) + total);
}

// out[c] += sum_k partial[k, c] for a partial [chunks, cols] f32 tensor.
inline void finish_column_sums(const Tensor& partial, std::int64_t chunks, std::int64_t cols,
                               Tensor& out) {
  const unsigned blocks = static_cast<unsigned>((cols + 31) / 32);
  dispatch_float(out.dtype(), "column sum output", [&](auto ot) {
    using O = decltype(ot);
    column_finish_kernel<<<blocks, kFinishWarps * 32>>>(cptr<float>(partial), chunks, cols,
                                                        mptr<O>(out));
  });
  MM_CUDA_CHECK_LAUNCH();
}

// out[c] += sum_r term(r, c), in a fixed order.
template <class Term>
void column_sums(CudaBackend& backend, Term term, std::int64_t rows, std::int64_t cols,
                 Tensor& out) {
  if (rows == 0 || cols == 0) return;
  const std::int64_t chunks = row_chunks(rows);
  MM_ASSERT(chunks < 65536, "column_sums over ", rows, " rows");
  Tensor partial = backend.empty({chunks, cols});
  const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
                  static_cast<unsigned>(chunks));
  column_partial_kernel<<<grid, kThreads>>>(term, rows, cols, mptr<float>(partial));
  MM_CUDA_CHECK_LAUNCH();
  finish_column_sums(partial, chunks, cols, out);
}

}  // namespace metamorph::cuda

// The RMSNorm backward with rows staged in shared memory by the SM's bulk copies (`bulk` in
// cuda_kernel_variants.hpp).
//
// Why: the warp kernels hold a row and the next in registers, which caps the bytes an SM keeps in
// flight; profiled at t8192 h4096 (ncu, H100) they moved 72-74% of the DRAM peak with warps
// waiting on global loads in most cycles (long-scoreboard stalls) and 12-18% of the SM's warps
// resident, the prefetched rows taking the registers. Here one thread asks the
// copy engine for a whole row of each tensor (dy, x and, fused, the residual gradient) into a
// ring of `stages` shared-memory buffers, several rows ahead of the block's threads, and the row
// buffers cost no registers. A transaction barrier per stage says when its rows have landed; a
// block barrier at the end of a row says its buffers may be refilled.
//
// Layout: a block of kThreads threads takes rows blockIdx.x, blockIdx.x + gridDim.x, ...; thread
// t owns runs k * kThreads + t of a row (cuda_norm_runs.cuh), reads them from the row buffers,
// holds the weight (f32) and its own columns' weight-gradient sums in shared memory in the
// permuted layout, and meets the other warps' dot products behind the block barrier. The block's
// sums go to partial[block, :] and column_finish_kernel adds the blocks in order: no atomics, and
// the bits repeat on a device (the grid is the same every call).
#include <algorithm>
#include <cstdint>

#include "runtime/backends/cuda/cuda_bulk_copy.cuh"
#include "runtime/backends/cuda/cuda_column_sums.cuh"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_norm_bulk.hpp"
#include "runtime/backends/cuda/cuda_norm_runs.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxStages = 4;
// Shared memory of an SM (sm_90: 228 KB, 1 KB of it reserved per resident block) and the most
// one block may ask for.
constexpr std::size_t kSmShared = 228 * 1024, kBlockReserved = 1024, kBlockMax = 227 * 1024;

// Floats of the permuted weight and weight-gradient layouts: whole runs for every thread.
int permuted_floats(std::int64_t n) {
  const std::int64_t runs = n / kRunElems;
  return static_cast<int>((runs + kThreads - 1) / kThreads * kThreads * kRunElems);
}

// Dynamic shared memory: the stages' row buffers, the weight, the weight-gradient sums, the warps'
// dot products and the stages' barriers.
std::size_t shared_bytes(int stages, int tensors, std::int64_t row_bytes, int floats) {
  return static_cast<std::size_t>(stages) * tensors * row_bytes + 2 * sizeof(float) * floats +
         kWarps * sizeof(double) + static_cast<std::size_t>(stages) * sizeof(std::uint64_t);
}

// dx = rstd * (g - x * rstd^2 * mean(g * x)) with g = dy * w, the row's dot product in double as in
// the warp kernels (cuda_norm_warp.cu says why); with Add, dx = round(round(dx) + residual).
template <class X, class W, bool Add>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_backward_bulk_kernel(const X* dy, const X* x, const W* w, const float* rstd,
                                 const X* residual, std::int64_t rows, int n, int stages,
                                 int floats, X* dx, float* partial) {
  namespace bc = bulk_copy;
  extern __shared__ __align__(128) unsigned char bulk_shared[];
  constexpr int kTensors = Add ? 3 : 2;
  constexpr int kWords = kWordsPerRun<X>;
  const int runs = n / kRunElems, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int runs_per_thread = (runs + kThreads - 1) / kThreads;
  const std::uint32_t row_bytes = static_cast<std::uint32_t>(n) * sizeof(X);
  auto row_buffer = [&](int stage, int tensor) {
    return reinterpret_cast<uint4*>(
        bulk_shared + (static_cast<std::size_t>(stage) * kTensors + tensor) * row_bytes);
  };
  float4* w_s = reinterpret_cast<float4*>(bulk_shared +
                                          static_cast<std::size_t>(stages) * kTensors * row_bytes);
  float4* dw_s = w_s + floats / 4;
  double* dots = reinterpret_cast<double*>(dw_s + floats / 4);
  std::uint64_t* landed = reinterpret_cast<std::uint64_t*>(dots + kWarps);

  const std::int64_t first = blockIdx.x, stride = gridDim.x;
  const std::int64_t my_rows = first < rows ? (rows - first + stride - 1) / stride : 0;
  // The j-th row of this block into stage j % stages (thread 0 only).
  auto issue = [&](std::int64_t j) {
    const std::int64_t at = (first + j * stride) * n;
    std::uint64_t* barrier = &landed[j % stages];
    bc::arrive_expecting(barrier, kTensors * row_bytes);
    bc::copy_to_shared(row_buffer(j % stages, 0), dy + at, row_bytes, barrier);
    bc::copy_to_shared(row_buffer(j % stages, 1), x + at, row_bytes, barrier);
    if constexpr (Add)
      bc::copy_to_shared(row_buffer(j % stages, 2), residual + at, row_bytes, barrier);
  };
  if (tid == 0) {
    for (int s = 0; s < stages; ++s) bc::barrier_init(&landed[s], 1);
    bc::fence_barrier_init();
    for (std::int64_t j = 0; j < stages && j < my_rows; ++j) issue(j);
  }
  stage_weight<kThreads>(w, n, w_s);
  for (int i = tid; i < floats / 4; i += kThreads) dw_s[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  __syncthreads();

  // Row j of this block, with its rstd `inv`.
  auto work_row = [&](std::int64_t j, float inv) {
    const std::int64_t row = first + j * stride;
    const int stage = static_cast<int>(j % stages);
    bc::wait(&landed[stage], static_cast<std::uint32_t>((j / stages) & 1));
    const uint4* dy_s = row_buffer(stage, 0);
    const uint4* x_s = row_buffer(stage, 1);
    const uint4* res_s = row_buffer(stage, Add ? 2 : 1);
    auto run_of = [&](const uint4* buffer, int r, float(&v)[kRunElems]) {
      uint4 word[kWords];
#pragma unroll
      for (int i = 0; i < kWords; ++i) word[i] = buffer[r * kWords + i];
      unpack_run<X>(word, v);
    };
    // Two chains of additions (even and odd elements), so that each waits half as long.
    double dot = 0.0, dot_odd = 0.0;
    for (int k = 0; k < runs_per_thread; ++k) {
      const int r = k * kThreads + tid;
      if (r < runs) {
        float g[kRunElems], xv[kRunElems], wv[kRunElems];
        run_of(dy_s, r, g);
        run_of(x_s, r, xv);
        load_shared_run<kThreads>(w_s, k, tid, wv);
#pragma unroll
        for (int e = 0; e < kRunElems; ++e) {
          double& chain = e % 2 == 0 ? dot : dot_odd;
          if constexpr (std::is_same_v<X, bf16>)
            chain += static_cast<double>(g[e] * xv[e]) * static_cast<double>(wv[e]);
          else
            chain += static_cast<double>(g[e]) * wv[e] * xv[e];
        }
      }
    }
    dot = warp_sum(dot + dot_odd);
    if (lane == 0) dots[warp] = dot;
    __syncthreads();
    dot = dots[0];
#pragma unroll
    for (int i = 1; i < kWarps; ++i) dot += dots[i];
    const float c = static_cast<float>(dot / static_cast<double>(n)) * inv * inv;
    X* out = dx + row * n;
    for (int k = 0; k < runs_per_thread; ++k) {
      const int r = k * kThreads + tid;
      if (r < runs) {
        float g[kRunElems], xv[kRunElems], wv[kRunElems], dwv[kRunElems], o[kRunElems];
        run_of(dy_s, r, g);
        run_of(x_s, r, xv);
        load_shared_run<kThreads>(w_s, k, tid, wv);
        load_shared_run<kThreads>(dw_s, k, tid, dwv);
#pragma unroll
        for (int e = 0; e < kRunElems; ++e) {
          dwv[e] += g[e] * xv[e] * inv;
          o[e] = inv * (g[e] * wv[e] - xv[e] * c);
        }
        if constexpr (Add) {
          // dx as the plain kernel stores it (rounded to X), then axpy's one f32 addition
          // (__fadd_rn: never contracted into the multiply above).
          uint4 rounded[kWords];
          pack_run<X>(o, rounded);
          unpack_run<X>(rounded, o);
          float res[kRunElems];
          run_of(res_s, r, res);
#pragma unroll
          for (int e = 0; e < kRunElems; ++e) o[e] = __fadd_rn(o[e], res[e]);
        }
        store_shared_run<kThreads>(dw_s, k, tid, dwv);
        store_run<kRunElems>(out + std::int64_t{r} * kRunElems, o);
      }
    }
    // Every thread is done with this stage's rows and with the dot products: refill the stage.
    __syncthreads();
    if (tid == 0 && j + stages < my_rows) issue(j + stages);
  };
  // Rows in pairs, each row's rstd loaded while the row before it works, into a register of its
  // own: a copy into the next row's register at the end of each row waited for the load there
  // (the profile's long-scoreboard stalls: rstd is the loop's only global load); the plain
  // backward at t8192 h4096 went from 0.098 to 0.094 ms.
  float inv_even = my_rows > 0 ? rstd[first] : 0.0f, inv_odd = 0.0f;
  for (std::int64_t j = 0; j < my_rows; j += 2) {
    if (j + 1 < my_rows) inv_odd = rstd[first + (j + 1) * stride];
    work_row(j, inv_even);
    if (j + 1 < my_rows) {
      if (j + 2 < my_rows) inv_even = rstd[first + (j + 2) * stride];
      work_row(j + 1, inv_odd);
    }
  }
  const float* sums = reinterpret_cast<const float*>(dw_s);
  float* block_sums = partial + std::int64_t{blockIdx.x} * n;
  for (int col = tid; col < n; col += kThreads) block_sums[col] = sums[permuted<kThreads>(col)];
}

// The stage count that keeps the most rows in flight on an SM with at least kMinBlocks blocks
// resident (ties: fewer stages, more blocks), or with fewer blocks where no count leaves room for
// kMinBlocks; 0 when two stages do not fit a block. A block works its rows one at a time, and one
// block's chain of dependent steps per row (loads from shared memory, the dot product, the block
// barrier) cannot keep the SM's memory busy alone: with one block of eight stages per SM the fused
// backward at t8192 h4096 ran at 62% of the copy bandwidth (H100), with two blocks of three 83%
// (the second build also split the dot product into two chains).
constexpr std::size_t kMinBlocks = 2;
int pick_stages(int tensors, std::int64_t row_bytes, int floats) {
  int best = 0;
  std::size_t best_rows = 0, best_blocks = 0;
  for (int stages = 2; stages <= kMaxStages; ++stages) {
    const std::size_t bytes = shared_bytes(stages, tensors, row_bytes, floats);
    if (bytes > kBlockMax) break;
    const std::size_t blocks = kSmShared / (bytes + kBlockReserved);
    const std::size_t rows_in_flight = blocks * static_cast<std::size_t>(stages);
    const bool more_blocks = std::min(blocks, kMinBlocks) > std::min(best_blocks, kMinBlocks);
    const bool as_many_blocks = std::min(blocks, kMinBlocks) == std::min(best_blocks, kMinBlocks);
    if (more_blocks || (as_many_blocks && rows_in_flight > best_rows))
      best = stages, best_rows = rows_in_flight, best_blocks = blocks;
  }
  return best;
}

template <bool Add>
bool backward_bulk(CudaBackend& backend, const Tensor& dy, const Tensor& x, const Tensor& w,
                   const Tensor& rstd, const Tensor* residual, std::int64_t rows, std::int64_t n,
                   Tensor& dx, Tensor& dw) {
  if (n % kRunElems != 0 || n > (std::int64_t{1} << 20) || !aligned16(dy.raw(), x.raw(), dx.raw()))
    return false;
  if constexpr (Add)
    if (residual->dtype() != dx.dtype() || !aligned16(residual->raw())) return false;
  const int floats = permuted_floats(n);
  const std::int64_t row_bytes = n * static_cast<std::int64_t>(dtype_size(x.dtype()));
  // The plain and the fused kernel take a shape together and run on one grid, so that the fused
  // one keeps the plain one's weight-gradient bits.
  const int plain_stages = pick_stages(2, row_bytes, floats);
  const int fused_stages = pick_stages(3, row_bytes, floats);
  if (plain_stages == 0 || fused_stages == 0) return false;
  const std::size_t plain_shared = shared_bytes(plain_stages, 2, row_bytes, floats);
  const std::size_t fused_shared = shared_bytes(fused_stages, 3, row_bytes, floats);
  dispatch_float(x.dtype(), "rmsnorm_backward", [&](auto xt) {
    using X = decltype(xt);
    dispatch_float(w.dtype(), "rmsnorm_backward", [&](auto wt) {
      using W = decltype(wt);
      constexpr auto kPlain = rmsnorm_backward_bulk_kernel<X, W, false>;
      constexpr auto kFused = rmsnorm_backward_bulk_kernel<X, W, true>;
      const unsigned resident = std::min(
          backend.resident_blocks(reinterpret_cast<const void*>(kPlain), kThreads, plain_shared),
          backend.resident_blocks(reinterpret_cast<const void*>(kFused), kThreads, fused_shared));
      const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(resident, rows));
      Tensor partial = backend.empty({static_cast<std::int64_t>(blocks), n});
      const X* res = Add ? cptr<X>(*residual) : nullptr;
      (Add ? kFused : kPlain)<<<blocks, kThreads, Add ? fused_shared : plain_shared>>>(
          cptr<X>(dy), cptr<X>(x), cptr<W>(w), cptr<float>(rstd), res, rows, static_cast<int>(n),
          Add ? fused_stages : plain_stages, floats, mptr<X>(dx), mptr<float>(partial));
      MM_CUDA_CHECK_LAUNCH();
      finish_column_sums(partial, blocks, n, dw);
    });
  });
  return true;
}

}  // namespace

bool rmsnorm_backward_bulk(CudaBackend& backend, const Tensor& dy, const Tensor& x, const Tensor& w,
                           const Tensor& rstd, const Tensor* residual_grad, std::int64_t rows,
                           std::int64_t n, Tensor& dx, Tensor& dw) {
  return residual_grad != nullptr
             ? backward_bulk<true>(backend, dy, x, w, rstd, residual_grad, rows, n, dx, dw)
             : backward_bulk<false>(backend, dy, x, w, rstd, nullptr, rows, n, dx, dw);
}

}  // namespace metamorph::cuda

// RMSNorm with one warp per row over a grid that fills the device once (the `warp`,
// `warp_prefetch` and `warp_prefetch_l1w` kernels of cuda_kernel_variants.hpp), and the backward
// with a row over a pair of warps (`warp_pair`) or over the block's four warps (`warp_quad`).
//
// Why this shape: a row of the models' widths (2048 to 4096 bf16, 4 to 8 KB) fits one warp's
// registers, so the row's reduction is a warp shuffle and no block ever synchronises inside the
// loop; a warp walks many rows, so blocks do not start and drain for every row, and the weight is
// staged once per block into shared memory instead of being re-read from L1 for every row (or,
// SharedWeight = false, read from L1 after all, to leave the shared memory to more blocks). With
// `Prefetch` the next row's loads are issued before the current row is reduced and stored: every
// warp keeps a row in flight while it computes, which is what a memory-bound kernel needs.
//
// Register layout: run k of a lane is the row's 16-byte-of-bf16 run k * 32 + lane (8 elements,
// one 16-byte word of bf16 or two of f32), K runs per lane, kept as loaded (packed) until used,
// so that reading them does not wait on the prefetched row. Shared-memory layout of the weight and
// of the weight-gradient sums: run k, half h (elements 4h..4h+3) of lane l at float4 slot
// (2k + h) * 32 + l, so that a warp's 16-byte accesses touch consecutive banks.
//
// The weight gradient: each warp adds dy * x * rstd of its rows into its own shared sums (a lane
// owns its columns: no races, no atomics); at the end the block adds its warps' sums in warp
// order into partial[block, :], and column_finish_kernel adds the blocks in order. The grid is
// the same on every run on a device (SM count x resident blocks), so the bits repeat run to run.
//
// Warp pairs (RowWarps = 2, backward only): at 4096 bf16 a lane would hold 16 runs of dy and 16 of
// x, and a prefetched second row would not fit the register budget; one row in flight per warp
// leaves the memory system idle while the row is reduced. Two warps of a block then share a row,
// warp h of the pair holding the half h * K * 32 ... (h + 1) * K * 32 - 1 of the row's runs (K
// runs per lane, the layout above over its half): each prefetches its half of the next row as a
// warp does at 2048. The halves' dot products meet in shared memory behind a barrier of the two
// warps only (rows run out for each pair on its own), added in half order so both warps hold the
// same bits. A warp's weight-gradient sums cover its half only, which halves their shared memory
// (48 KB a block at 4096 instead of 80 KB), so that the registers, as at 2048, rather than the
// shared memory bound the resident blocks.
//
// Warp quads (RowWarps = 4): the same over the block's four warps, a quarter of the row each, the
// quarters' dot products meeting behind the block's barrier. A lane's quarter of a 4096 row is 4
// runs, so that the fused backward's residual rows fit the register budget beside the prefetched
// dy and x: they are prefetched too (wherever three tensors' prefetched rows fit, whatever the
// row warps), instead of loaded as a row's work starts and waited for before its stores.
#include <algorithm>
#include <cstdint>

#include "runtime/backends/cuda/cuda_column_sums.cuh"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_norm_runs.cuh"
#include "runtime/backends/cuda/cuda_norm_warp.hpp"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

constexpr int kWarps = 4;  // warps per block
constexpr int kBlockThreads = kWarps * 32;
constexpr int kMaxRuns = 16;     // runs per lane: rows up to 16 x 32 x 8 = 4096 elements
constexpr int kRawBudget = 128;  // registers a lane may spend on loaded rows

// Registers of the rows a lane keeps loaded: `tensors` rows (x; or dy and x) of K runs, twice when
// the next row is prefetched.
template <class X>
constexpr bool registers_fit(int runs_per_lane, int tensors, bool prefetch) {
  return (prefetch ? 2 : 1) * tensors * runs_per_lane * 4 * kWordsPerRun<X> <= kRawBudget;
}

// One lane's runs of a row, as loaded.
template <class X, int K>
struct RawRow {
  uint4 word[K][kWordsPerRun<X>];
};

template <class X, int K>
__device__ __forceinline__ void load_row(const X* row, int runs, RawRow<X, K>& raw) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int r = k * 32 + lane;
    if (r < runs) {
      const uint4* p = reinterpret_cast<const uint4*>(row + std::int64_t{r} * kRunElems);
#pragma unroll
      for (int i = 0; i < kWordsPerRun<X>; ++i) raw.word[k][i] = p[i];
    }
  }
}

// Calls finish(buffer, row) for rows first, first + stride, ... < rows, loading each with
// load(buffer, row); with Prefetch the next row's load is issued before the current row's finish
// (two buffers in turn: copying a buffer would wait for its loads). prologue() runs once, by every
// thread, after the first row's load is issued: the block's setup (staging the weight, its
// __syncthreads) overlaps that load.
template <bool Prefetch, class Buffer, class Load, class Finish, class Prologue>
__device__ __forceinline__ void walk_rows(std::int64_t first, std::int64_t stride,
                                          std::int64_t rows, Load load, Finish finish,
                                          Prologue prologue) {
  if constexpr (!Prefetch) {
    Buffer a;
    if (first < rows) load(a, first);
    prologue();
    for (std::int64_t row = first; row < rows; row += stride) {
      if (row != first) load(a, row);
      finish(a, row);
    }
  } else {
    Buffer a, b;
    if (first < rows) load(a, first);
    prologue();
    for (std::int64_t row = first; row < rows; row += 2 * stride) {
      const std::int64_t next = row + stride, after = row + 2 * stride;
      if (next < rows) load(b, next);
      finish(a, row);
      if (after < rows) load(a, after);
      if (next < rows) finish(b, next);
    }
  }
}

// A forward row as loaded: x, and with Add the addend (the addend unused, and so dropped by the
// compiler, without).
template <class X, int K>
struct NormRows {
  RawRow<X, K> x, addend;
};

// y = x * rstd * w per row. With Add the kernel's x is first replaced by round(x + addend), stored
// to sum (the same memory as x: the residual stream) and normalised from the rounded values, so
// that the bits are those of axpy(1, addend, x) followed by the plain kernel: the same sum of
// squares in the same order over the same values.
template <class X, class W, int K, bool Prefetch, bool SharedWeight, bool Add>
__global__ void __launch_bounds__(kBlockThreads)
    rmsnorm_forward_warp_kernel(const X* x, const X* addend, X* sum, const W* w, float eps,
                                std::int64_t rows, int n, X* y, float* rstd) {
  __shared__ float4 w_s[SharedWeight ? K * 64 : 1];
  const int runs = n / kRunElems, lane = threadIdx.x % 32;
  auto weight_run = [&](int k, float(&wv)[kRunElems]) {
    if constexpr (SharedWeight)
      load_shared_run<32>(w_s, k, lane, wv);
    else
      load_run<kRunElems>(w + std::int64_t{k * 32 + lane} * kRunElems, wv);
  };
  auto load = [&](NormRows<X, K>& buffer, std::int64_t row) {
    load_row<X, K>(x + row * n, runs, buffer.x);
    if constexpr (Add) load_row<X, K>(addend + row * n, runs, buffer.addend);
  };
  auto finish = [&](NormRows<X, K>& buffer, std::int64_t row) {
    RawRow<X, K>& raw = buffer.x;
    if constexpr (Add) {
      // axpy's arithmetic: one f32 addition (__fadd_rn: never contracted), rounded to X.
      X* sum_row = sum + row * n;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int r = k * 32 + lane;
        if (r < runs) {
          float v[kRunElems], a[kRunElems];
          unpack_run<X>(raw.word[k], v);
          unpack_run<X>(buffer.addend.word[k], a);
#pragma unroll
          for (int j = 0; j < kRunElems; ++j) v[j] = __fadd_rn(v[j], a[j]);
          pack_run<X>(v, raw.word[k]);
          uint4* p = reinterpret_cast<uint4*>(sum_row + std::int64_t{r} * kRunElems);
#pragma unroll
          for (int i = 0; i < kWordsPerRun<X>; ++i) p[i] = raw.word[k][i];
        }
      }
    }
    float sum_squares = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k * 32 + lane < runs) {
        float v[kRunElems];
        unpack_run<X>(raw.word[k], v);
#pragma unroll
        for (int j = 0; j < kRunElems; ++j) sum_squares += v[j] * v[j];
      }
    }
    sum_squares = warp_sum(sum_squares);
    const float inv = rsqrtf(sum_squares / static_cast<float>(n) + eps);
    if (lane == 0) rstd[row] = inv;
    X* out = y + row * n;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int r = k * 32 + lane;
      if (r < runs) {
        float v[kRunElems], wv[kRunElems];
        unpack_run<X>(raw.word[k], v);
        weight_run(k, wv);
#pragma unroll
        for (int j = 0; j < kRunElems; ++j) v[j] = v[j] * inv * wv[j];
        store_run<kRunElems>(out + std::int64_t{r} * kRunElems, v);
      }
    }
  };
  auto prologue = [&] {
    if constexpr (SharedWeight) {
      stage_weight<32>(w, n, w_s);
      __syncthreads();
    }
  };
  walk_rows<Prefetch, NormRows<X, K>>(std::int64_t{blockIdx.x} * kWarps + threadIdx.x / 32,
                                      std::int64_t{gridDim.x} * kWarps, rows, load, finish,
                                      prologue);
}

// A backward row as loaded: dy, x, the residual gradient where it is prefetched (unused, and so
// dropped by the compiler, where it is not) and the row's rstd.
template <class X, int K>
struct GradRows {
  RawRow<X, K> dy, x, residual;
  float inv;
};

// Doubles after the weight-gradient sums in the backward's shared memory: the group's part dot
// products, two rows' worth (a warp may write the next row's while a partner still reads this
// row's; a third row's write waits behind the partner's arrival at the next row's barrier).
template <int RowWarps>
constexpr int kGroupDotDoubles = RowWarps == 1 ? 0 : 2 * kWarps;

// Waits for the warps of row group `group`: a pair's two warps (named barrier group + 1; 0 is
// __syncthreads'), or a quad's, which is the block. The ids are constants: with an id in a
// register ptxas reserves all 16 of the block's barriers.
template <int RowWarps>
__device__ __forceinline__ void group_barrier(int group) {
  static_assert(kWarps == 4, "one barrier per pair, the block's for a quad");
  if constexpr (RowWarps == 4)
    __syncthreads();
  else if (group == 0)
    __barrier_sync_count(1, 64);
  else
    __barrier_sync_count(2, 64);
}

// Whether the fused backward prefetches the residual gradient with dy and x.
template <class X, int K, bool Prefetch, bool Add>
constexpr bool kPrefetchResidual = Add&& Prefetch&& registers_fit<X>(K, 3, true);

// dx = rstd * (g - x * rstd^2 * mean(g * x)) with g = dy * w (dx may alias dy: a row's loads
// all complete before its stores, and a prefetched row is another row), and the weight gradient's
// per-block sums partial[block, c]. A row over RowWarps warps, K runs per lane of each. Dynamic
// shared memory: backward_warp's `shared`.
// With Add, dx = round(round(dx) + residual) instead: the bits of the plain kernel followed by
// axpy(1, residual, dx). The residual row is prefetched with dy and x where three tensors' rows
// fit the register budget (kPrefetchResidual); elsewhere (a warp's row at 2048, a pair's at 4096)
// it is loaded as the row's work starts, its loads running beside the row's dot product.
template <class X, class W, int K, int RowWarps, bool Prefetch, bool SharedWeight, bool Add>
__global__ void __launch_bounds__(kBlockThreads)
    rmsnorm_backward_warp_kernel(const X* dy, const X* x, const W* w, const float* rstd,
                                 const X* residual, std::int64_t rows, int n, X* dx,
                                 float* partial) {
  extern __shared__ float4 norm_shared[];
  constexpr int kWeightSlots = SharedWeight ? RowWarps * K * 64 : 0;
  constexpr int kRowsPerBlock = kWarps / RowWarps;
  constexpr bool kResidualAhead = kPrefetchResidual<X, K, Prefetch, Add>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = warp / RowWarps, part = warp % RowWarps;
  // This warp's part of the row: its first run, element and weight slot.
  const int first_run = part * K * 32;
  const std::int64_t first = std::int64_t{first_run} * kRunElems;
  const float4* w_s = norm_shared + part * K * 64;
  float4* dw_s = norm_shared + kWeightSlots + K * 64 * warp;
  double* group_dot = reinterpret_cast<double*>(norm_shared + kWeightSlots + K * 64 * kWarps);
  int turn = 0;                                // which of group_dot's two rows
  const int runs = n / kRunElems - first_run;  // this warp's, none if negative
  auto weight_run = [&](int k, float(&wv)[kRunElems]) {
    if constexpr (SharedWeight)
      load_shared_run<32>(w_s, k, lane, wv);
    else
      load_run<kRunElems>(w + first + std::int64_t{k * 32 + lane} * kRunElems, wv);
  };
  auto load = [&](GradRows<X, K>& buffer, std::int64_t row) {
    load_row<X, K>(dy + row * n + first, runs, buffer.dy);
    load_row<X, K>(x + row * n + first, runs, buffer.x);
    if constexpr (kResidualAhead) load_row<X, K>(residual + row * n + first, runs, buffer.residual);
    buffer.inv = rstd[row];
  };
  auto finish = [&](GradRows<X, K>& buffer, std::int64_t row) {
    RawRow<X, K> residual_late;
    if constexpr (Add && !kResidualAhead)
      load_row<X, K>(residual + row * n + first, runs, residual_late);
    const RawRow<X, K>& residual_row = kResidualAhead ? buffer.residual : residual_late;
    // The row dot product in double, like the CPU reference: dx subtracts two nearly equal terms
    // when a row is dominated by one element. For bf16 inputs g * x is exact in f32 (two 8-bit
    // significands), so converting the product saves a conversion and changes no bit.
    double dot = 0.0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k * 32 + lane < runs) {
        float g[kRunElems], xv[kRunElems], wv[kRunElems];
        unpack_run<X>(buffer.dy.word[k], g);
        unpack_run<X>(buffer.x.word[k], xv);
        weight_run(k, wv);
#pragma unroll
        for (int j = 0; j < kRunElems; ++j) {
          if constexpr (std::is_same_v<X, bf16>)
            dot += static_cast<double>(g[j] * xv[j]) * static_cast<double>(wv[j]);
          else
            dot += static_cast<double>(g[j]) * wv[j] * xv[j];
        }
      }
    }
    dot = warp_sum(dot);
    if constexpr (RowWarps > 1) {
      double* slots = group_dot + turn * kWarps + group * RowWarps;
      if (lane == 0) slots[part] = dot;
      group_barrier<RowWarps>(group);
      dot = slots[0];
#pragma unroll
      for (int i = 1; i < RowWarps; ++i) dot += slots[i];
      turn ^= 1;
    }
    const float inv = buffer.inv;
    const float c = static_cast<float>(dot / static_cast<double>(n)) * inv * inv;
    X* out = dx + row * n + first;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int r = k * 32 + lane;
      if (r < runs) {
        float g[kRunElems], xv[kRunElems], wv[kRunElems], dwv[kRunElems], o[kRunElems];
        unpack_run<X>(buffer.dy.word[k], g);
        unpack_run<X>(buffer.x.word[k], xv);
        weight_run(k, wv);
        load_shared_run<32>(dw_s, k, lane, dwv);
#pragma unroll
        for (int j = 0; j < kRunElems; ++j) {
          dwv[j] += g[j] * xv[j] * inv;
          o[j] = inv * (g[j] * wv[j] - xv[j] * c);
        }
        if constexpr (Add) {
          // dx as the plain kernel stores it (rounded to X), then axpy's one f32 addition
          // (__fadd_rn: never contracted into the multiply above).
          uint4 rounded[kWordsPerRun<X>];
          pack_run<X>(o, rounded);
          unpack_run<X>(rounded, o);
          float res[kRunElems];
          unpack_run<X>(residual_row.word[k], res);
#pragma unroll
          for (int j = 0; j < kRunElems; ++j) o[j] = __fadd_rn(o[j], res[j]);
        }
        store_shared_run<32>(dw_s, k, lane, dwv);
        store_run<kRunElems>(out + std::int64_t{r} * kRunElems, o);
      }
    }
  };
  auto prologue = [&] {
    for (int i = threadIdx.x; i < K * 64 * kWarps; i += blockDim.x)
      norm_shared[kWeightSlots + i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if constexpr (SharedWeight) stage_weight<32>(w, n, norm_shared);
    __syncthreads();
  };
  walk_rows<Prefetch, GradRows<X, K>>(std::int64_t{blockIdx.x} * kRowsPerBlock + group,
                                      std::int64_t{gridDim.x} * kRowsPerBlock, rows, load, finish,
                                      prologue);
  __syncthreads();
  // The sums of the warps that hold column c (those of its part), in warp order.
  const float* sums = reinterpret_cast<const float*>(norm_shared + kWeightSlots);
  float* out = partial + std::int64_t{blockIdx.x} * n;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    const int p = permuted<32>(c), h = p / (K * 256), slot = p % (K * 256);
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < kRowsPerBlock; ++i) total += sums[(i * RowWarps + h) * K * 256 + slot];
    out[c] = total;
  }
}

// The kernels for given options, as class templates over <Prefetch, SharedWeight>.
// `plain` and `fused` are the kernels without and with the residual add for the same options:
// both run on one grid, since the grid fixes the order of the weight-gradient sums.
template <class X, class W, int K, bool Add>
struct ForwardKernel {
  template <bool Prefetch, bool SharedWeight>
  struct Make {
    static constexpr auto kernel =
        rmsnorm_forward_warp_kernel<X, W, K, Prefetch, SharedWeight, Add>;
  };
};
template <class X, class W, int K, int RowWarps, bool Add>
struct BackwardKernel {
  template <bool Prefetch, bool SharedWeight>
  struct Make {
    static constexpr auto kernel =
        rmsnorm_backward_warp_kernel<X, W, K, RowWarps, Prefetch, SharedWeight, Add>;
    static constexpr auto plain =
        rmsnorm_backward_warp_kernel<X, W, K, RowWarps, Prefetch, SharedWeight, false>;
    static constexpr auto fused =
        rmsnorm_backward_warp_kernel<X, W, K, RowWarps, Prefetch, SharedWeight, true>;
  };
};

// Runs per lane for rows of n elements: the power of two covering n / 8 runs over 32 lanes, or 0
// when the row is too long for the register layout.
int runs_per_lane(std::int64_t n) {
  const std::int64_t need = (n / kRunElems + 31) / 32;
  for (int k = 1; k <= kMaxRuns; k *= 2)
    if (k >= need) return k;
  return 0;
}

// Calls fn(std::integral_constant<int, K>) for K = k, one of 1, 2, 4, 8, 16.
template <int K = 1, class Fn>
void dispatch_runs(int k, Fn&& fn) {
  if (k == K)
    fn(std::integral_constant<int, K>{});
  else if constexpr (K < kMaxRuns)
    dispatch_runs<2 * K>(k, fn);
  else
    MM_ASSERT(false, "rmsnorm runs per lane ", k);
}

// Blocks of a grid that fills the device once with `kernel`, and no more than the rows need at
// rows_per_block rows a block at a time. Also raises the kernel's shared-memory limit where
// `shared` needs it (resident_blocks does), so call it for every kernel before its launch.
template <class Kernel>
unsigned row_blocks(CudaBackend& backend, Kernel kernel, std::size_t shared, std::int64_t rows,
                    int rows_per_block = kWarps) {
  const unsigned resident =
      backend.resident_blocks(reinterpret_cast<const void*>(kernel), kBlockThreads, shared);
  return static_cast<unsigned>(
      std::min<std::int64_t>(resident, (rows + rows_per_block - 1) / rows_per_block));
}

// Calls fn(Make<Prefetch, SharedWeight>{}) for the options, prefetching only where the registers
// allow it; returns false when even the plain kernel's rows do not fit the registers.
template <class X, int K, int Tensors, template <bool, bool> class Make, class Fn>
bool with_kernel(WarpNormOptions options, Fn&& fn) {
  auto pick = [&](auto shared_weight) {
    [[maybe_unused]] constexpr bool kShared = decltype(shared_weight)::value;
    if constexpr (registers_fit<X>(K, Tensors, true)) {
      if (options.prefetch) {
        fn(Make<true, kShared>{});
        return true;
      }
    }
    if constexpr (registers_fit<X>(K, Tensors, false)) {
      fn(Make<false, kShared>{});
      return true;
    }
    return false;
  };
  return options.shared_weight ? pick(std::true_type{}) : pick(std::false_type{});
}

// The forward for x, or with `addend` for x += addend first (the sum stored to `sum`, which is x:
// the residual stream).
template <bool Add>
bool forward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& x,
                  const Tensor* addend, Tensor* sum, const Tensor& w, float eps, std::int64_t rows,
                  std::int64_t n, Tensor& y, Tensor& rstd) {
  const int k = runs_per_lane(n);
  if (n % kRunElems != 0 || k == 0 || !aligned16(x.raw(), y.raw())) return false;
  if constexpr (Add)
    if (addend->dtype() != x.dtype() || !aligned16(addend->raw())) return false;
  options.shared_weight = options.shared_weight || !aligned16(w.raw());
  bool launched = false;
  dispatch_float(x.dtype(), "rmsnorm_forward", [&](auto xt) {
    using X = decltype(xt);
    dispatch_float(w.dtype(), "rmsnorm_forward", [&](auto wt) {
      using W = decltype(wt);
      dispatch_runs(k, [&](auto runs) {
        constexpr int K = decltype(runs)::value;
        constexpr int kTensors = Add ? 2 : 1;
        launched = with_kernel<X, K, kTensors, ForwardKernel<X, W, K, Add>::template Make>(
            options, [&](auto make) {
              constexpr auto kernel = decltype(make)::kernel;
              const unsigned blocks = row_blocks(backend, kernel, 0, rows);
              const X* add = Add ? cptr<X>(*addend) : nullptr;
              X* sum_out = Add ? mptr<X>(*sum) : nullptr;
              kernel<<<blocks, kBlockThreads>>>(cptr<X>(x), add, sum_out, cptr<W>(w), eps, rows,
                                                static_cast<int>(n), mptr<X>(y), mptr<float>(rstd));
              MM_CUDA_CHECK_LAUNCH();
            });
      });
    });
  });
  return launched;
}

// The backward, or with `residual` dx += residual after it.
template <bool Add>
bool backward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& dy, const Tensor& x,
                   const Tensor& w, const Tensor& rstd, const Tensor* residual, std::int64_t rows,
                   std::int64_t n, Tensor& dx, Tensor& dw) {
  const int k = runs_per_lane(n);
  if (n % kRunElems != 0 || k == 0 || !aligned16(dy.raw(), x.raw(), dx.raw())) return false;
  if constexpr (Add)
    if (residual->dtype() != dx.dtype() || !aligned16(residual->raw())) return false;
  options.shared_weight = options.shared_weight || !aligned16(w.raw());
  // A group needs a run per lane for each of its warps; shorter rows take smaller groups.
  int row_warps = options.row_warps;
  while (row_warps > k) row_warps /= 2;
  bool launched = false;
  dispatch_float(x.dtype(), "rmsnorm_backward", [&](auto xt) {
    using X = decltype(xt);
    dispatch_float(w.dtype(), "rmsnorm_backward", [&](auto wt) {
      using W = decltype(wt);
      auto launch = [&](auto runs, auto row_warps) {
        constexpr int K = decltype(runs)::value, kRowWarps = decltype(row_warps)::value;
        // The weight (when staged, the whole row), each warp's weight-gradient sums (its part of
        // the row) and the groups' dot products.
        const std::size_t shared =
            static_cast<std::size_t>((options.shared_weight ? kRowWarps : 0) + kWarps) * K * 64 *
                sizeof(float4) +
            kGroupDotDoubles<kRowWarps> * sizeof(double);
        constexpr int kRowsPerBlock = kWarps / kRowWarps;
        // The prefetch choice is the plain kernel's (two tensors per prefetched row), so that the
        // fused kernel's loop is the plain one's.
        launched = with_kernel<X, K, 2, BackwardKernel<X, W, K, kRowWarps, Add>::template Make>(
            options, [&](auto make) {
              constexpr auto kernel = decltype(make)::kernel;
              // One grid for the plain and the fused kernel, for the same weight-gradient bits:
              // the blocks both hold resident (the fused kernel's extra residual registers may
              // hold fewer, and a second wave of blocks would cost it a tail).
              const unsigned blocks =
                  std::min(row_blocks(backend, decltype(make)::plain, shared, rows, kRowsPerBlock),
                           row_blocks(backend, decltype(make)::fused, shared, rows, kRowsPerBlock));
              MM_ASSERT(blocks > 0, "rmsnorm_backward: no block fits the device");
              Tensor partial = backend.empty({static_cast<std::int64_t>(blocks), n});
              const X* res = Add ? cptr<X>(*residual) : nullptr;
              kernel<<<blocks, kBlockThreads, shared>>>(
                  cptr<X>(dy), cptr<X>(x), cptr<W>(w), cptr<float>(rstd), res, rows,
                  static_cast<int>(n), mptr<X>(dx), mptr<float>(partial));
              MM_CUDA_CHECK_LAUNCH();
              finish_column_sums(partial, blocks, n, dw);
            });
      };
      dispatch_runs(k, [&](auto runs) {
        constexpr int K = decltype(runs)::value;
        if constexpr (K >= 4) {
          if (row_warps == 4) {
            launch(std::integral_constant<int, K / 4>{}, std::integral_constant<int, 4>{});
            return;
          }
        }
        if constexpr (K >= 2) {
          if (row_warps == 2) {
            launch(std::integral_constant<int, K / 2>{}, std::integral_constant<int, 2>{});
            return;
          }
        }
        launch(runs, std::integral_constant<int, 1>{});
      });
    });
  });
  return launched;
}

}  // namespace

bool rmsnorm_forward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& x,
                          const Tensor& w, float eps, std::int64_t rows, std::int64_t n, Tensor& y,
                          Tensor& rstd) {
  return forward_warp<false>(options, backend, x, nullptr, nullptr, w, eps, rows, n, y, rstd);
}

bool add_rmsnorm_forward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& x,
                              Tensor& r, const Tensor& w, float eps, std::int64_t rows,
                              std::int64_t n, Tensor& y, Tensor& rstd) {
  return forward_warp<true>(options, backend, r, &x, &r, w, eps, rows, n, y, rstd);
}

bool rmsnorm_backward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& dy,
                           const Tensor& x, const Tensor& w, const Tensor& rstd, std::int64_t rows,
                           std::int64_t n, Tensor& dx, Tensor& dw) {
  return backward_warp<false>(options, backend, dy, x, w, rstd, nullptr, rows, n, dx, dw);
}

bool rmsnorm_backward_add_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& dy,
                               const Tensor& x, const Tensor& w, const Tensor& rstd,
                               const Tensor& residual_grad, std::int64_t rows, std::int64_t n,
                               Tensor& dx, Tensor& dw) {
  return backward_warp<true>(options, backend, dy, x, w, rstd, &residual_grad, rows, n, dx, dw);
}

}  // namespace metamorph::cuda

// RMSNorm and the bias gradient of the CUDA backend: the RMSNorm launchers of
// cuda_kernel_variants.hpp and their `rows` kernels (the `warp` kernels live in cuda_norm_warp.cu;
// shapes those do not take come here too).
//
// RMSNorm reads each row from memory once: the row lives in registers between the sum of squares
// (or, backward, the row dot product) and the output. A row belongs to `warps_per_row` warps of a
// 256-thread block; lane l of the row's warp w holds the runs of V elements l + 32 w,
// l + 32 w + 32 warps_per_row, ... (K of them at most), V = 16 bytes of x where the row length and
// the pointers allow wide accesses, else V = 1. Rows longer than 8 warps x 32 lanes x K runs take
// the block-per-row kernels at the end, which read x twice.
// The weight gradient's column sums ride along in the backward pass: a block walks a fixed chunk
// of kRowsPerChunk rows, each thread keeping the partial sums of its columns in registers; the
// block's row groups are added in a fixed order through shared memory into partial[chunk, col],
// and the finish kernel of cuda_column_sums adds the chunks in order. No atomics anywhere: the same
// bits every run. The bias gradient uses the plain two-pass column sums.
#include <cmath>
#include <type_traits>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_column_sums.cuh"
#include "runtime/backends/cuda/cuda_kernel_variants.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_norm_bulk.hpp"
#include "runtime/backends/cuda/cuda_norm_warp.hpp"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

template <class T>
struct BiasTerm {
  const T* dy;
  std::int64_t cols;
  __device__ float operator()(std::int64_t r, std::int64_t c) const {
    return to_float(dy[r * cols + c]);
  }
};

template <class T>
struct NormWeightTerm {
  const T* dy;
  const T* x;
  const float* rstd;
  std::int64_t cols;
  __device__ float operator()(std::int64_t r, std::int64_t c) const {
    return to_float(dy[r * cols + c]) * to_float(x[r * cols + c]) * rstd[r];
  }
};

constexpr int kRowWarps = 8;  // warps of a row-kernel block
constexpr int kRowThreads = kRowWarps * 32;

// Sum over the warps_per_row warps that share a row, in a fixed order; every thread of the row
// gets the same bits. Every thread of the block must call it (it may synchronise the block).
template <class T>
__device__ T row_sum(T value, T* scratch, int warps_per_row) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (warps_per_row == 1) return value;
  const int warp = threadIdx.x / 32, first = warp - warp % warps_per_row;
  __syncthreads();  // scratch may still be read from the previous row
  if (threadIdx.x % 32 == 0) scratch[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps_per_row; ++w) total += scratch[first + w];
  return total;
}

// Where a thread sits in the row layout.
struct RowSlot {
  int group;       // which of the block's rows (kRowWarps / warps_per_row of them)
  int groups;      // rows per block
  int first_run;   // the thread's first run in the row
  int run_stride;  // between its runs
  __device__ explicit RowSlot(int warps_per_row) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    group = warp / warps_per_row;
    groups = kRowWarps / warps_per_row;
    first_run = (warp % warps_per_row) * 32 + lane;
    run_stride = warps_per_row * 32;
  }
};

template <class X, class W, int V, int K>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_forward_rows_kernel(const X* x, const W* w, float eps, std::int64_t rows,
                                std::int64_t n, int warps_per_row, X* y, float* rstd) {
  __shared__ float scratch[kRowWarps];
  const RowSlot slot(warps_per_row);
  const std::int64_t row = std::int64_t{blockIdx.x} * slot.groups + slot.group;
  const bool active = row < rows;
  const std::int64_t runs = n / V;
  float v[K][V];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const std::int64_t r = slot.first_run + std::int64_t{k} * slot.run_stride;
    if (active && r < runs) {
      load_run<V>(x + row * n + r * V, v[k]);
#pragma unroll
      for (int j = 0; j < V; ++j) sum += v[k][j] * v[k][j];
    }
  }
  sum = row_sum(sum, scratch, warps_per_row);
  if (!active) return;
  const float inv = rsqrtf(sum / static_cast<float>(n) + eps);
  if (slot.first_run == 0) rstd[row] = inv;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const std::int64_t r = slot.first_run + std::int64_t{k} * slot.run_stride;
    if (r < runs) {
      float wv[V];
      load_run<V>(w + r * V, wv);
#pragma unroll
      for (int j = 0; j < V; ++j) v[k][j] = v[k][j] * inv * wv[j];
      store_run<V>(y + row * n + r * V, v[k]);
    }
  }
}

// dx = rstd * (g - x * rstd^2 * mean(g * x)) with g = dy * w, and
// dw_partial[block, c] = sum over the block's rows of dy * x * rstd. dx may alias dy: every thread
// reads its runs of a row before writing them. Dynamic shared memory: n floats when a block holds
// more than one row group.
template <class X, class W, int V, int K>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_backward_rows_kernel(const X* dy, const X* x, const W* w, const float* rstd,
                                 std::int64_t rows, std::int64_t n, int warps_per_row, X* dx,
                                 float* dw_partial) {
  extern __shared__ float dw_shared[];
  __shared__ double scratch[kRowWarps];
  const RowSlot slot(warps_per_row);
  const std::int64_t runs = n / V;
  const std::int64_t begin = std::int64_t{blockIdx.x} * kRowsPerChunk;
  const std::int64_t end = min(rows, begin + kRowsPerChunk);
  // A thread's columns are the same for every row of the block: w is loaded once.
  float dw[K][V], wv[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const std::int64_t r = slot.first_run + std::int64_t{k} * slot.run_stride;
#pragma unroll
    for (int j = 0; j < V; ++j) dw[k][j] = wv[k][j] = 0.0f;
    if (r < runs) load_run<V>(w + r * V, wv[k]);
  }
  // The loop bounds are the same for every thread of the block (row_sum may synchronise).
  for (std::int64_t base = begin; base < end; base += slot.groups) {
    const std::int64_t row = base + slot.group;
    const bool active = row < end;
    float g[K][V], xv[K][V];
    // The row dot product in double, like the CPU reference: dx subtracts two nearly equal terms
    // when a row is dominated by one element.
    double dot = 0.0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const std::int64_t r = slot.first_run + std::int64_t{k} * slot.run_stride;
      if (active && r < runs) {
        load_run<V>(dy + row * n + r * V, g[k]);
        load_run<V>(x + row * n + r * V, xv[k]);
#pragma unroll
        for (int j = 0; j < V; ++j) dot += static_cast<double>(g[k][j]) * wv[k][j] * xv[k][j];
      }
    }
    dot = row_sum(dot, scratch, warps_per_row);
    if (!active) continue;
    const float inv = rstd[row];
    const float c = static_cast<float>(dot / static_cast<double>(n)) * inv * inv;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const std::int64_t r = slot.first_run + std::int64_t{k} * slot.run_stride;
      if (r < runs) {
        float out[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          dw[k][j] += g[k][j] * xv[k][j] * inv;
          out[j] = inv * (g[k][j] * wv[k][j] - xv[k][j] * c);
        }
        store_run<V>(dx + row * n + r * V, out);
      }
    }
  }
  float* partial = dw_partial + std::int64_t{blockIdx.x} * n;
  if (slot.groups == 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const std::int64_t r = slot.first_run + std::int64_t{k} * slot.run_stride;
      if (r < runs) store_run<V>(partial + r * V, dw[k]);
    }
    return;
  }
  // Row groups in order: group 0 writes, the others add.
  for (int group = 0; group < slot.groups; ++group) {
    if (slot.group == group) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const std::int64_t r = slot.first_run + std::int64_t{k} * slot.run_stride;
        if (r < runs)
#pragma unroll
          for (int j = 0; j < V; ++j)
            dw_shared[r * V + j] = group == 0 ? dw[k][j] : dw_shared[r * V + j] + dw[k][j];
      }
    }
    __syncthreads();
  }
  for (std::int64_t c = threadIdx.x; c < n; c += blockDim.x) partial[c] = dw_shared[c];
}

// The register row layout for rows of n elements, or fits = false.
struct RowLayout {
  bool fits = false;
  int vec = 1;            // V
  int runs_per_lane = 1;  // K
  int warps_per_row = 1;
  int groups() const { return kRowWarps / warps_per_row; }
};

// Row layouts. Each block keeps (rows per block) x (row bytes) in flight per step, bounded by
// the registers that hold the rows.
// Forward: one warp per row where K <= 8 runs per lane cover it (8 x 16 bytes of bf16 per lane:
// a row of 2048 with one warp, no block synchronisation), else 8 runs per lane over several warps.
// Backward: a thread holds dy, x and its columns' dw partials, and a block walks a fixed chunk of
// rows, so the grid is small (rows / 64 blocks); the fewest runs per lane that keep at least two
// rows per block (warps_per_row <= 4) lets two blocks share an SM and keeps every block's rows in
// flight at once (K = 2 over 4 warps for a bf16 row of 2048).
RowLayout make_layout(std::int64_t n, bool wide, int wide_vec, int runs_per_lane) {
  RowLayout layout;
  layout.vec = wide ? wide_vec : 1;
  layout.runs_per_lane = runs_per_lane;
  const std::int64_t per_lane = (n / layout.vec + 31) / 32;
  const std::int64_t warps = (per_lane + runs_per_lane - 1) / runs_per_lane;
  while (layout.warps_per_row < warps) layout.warps_per_row *= 2;
  layout.fits = layout.warps_per_row <= kRowWarps;
  return layout;
}

RowLayout forward_layout(std::int64_t n, bool wide, int wide_vec) {
  for (int k : {1, 4})
    if (const RowLayout layout = make_layout(n, wide, wide_vec, k); layout.warps_per_row == 1)
      return layout;
  return make_layout(n, wide, wide_vec, 8);
}

RowLayout backward_layout(std::int64_t n, bool wide, int wide_vec) {
  for (int k : {1, 2})
    if (const RowLayout layout = make_layout(n, wide, wide_vec, k); layout.warps_per_row <= 4)
      return layout;
  return make_layout(n, wide, wide_vec, 4);
}

// Calls fn(std::integral_constant<int, V>, std::integral_constant<int, K>) for the layout's V and
// K; Ks lists the K its layout function can give (only those are instantiated).
template <class X, int... Ks, class Fn>
void dispatch_layout(const RowLayout& layout, Fn&& fn) {
  auto with_vec = [&](auto vec) {
    const bool found =
        ((layout.runs_per_lane == Ks ? (fn(vec, std::integral_constant<int, Ks>{}), true)
                                     : false) ||
         ...);
    MM_ASSERT(found, "rmsnorm runs per lane ", layout.runs_per_lane);
  };
  if (layout.vec == 1)
    with_vec(std::integral_constant<int, 1>{});
  else
    with_vec(std::integral_constant<int, kPerWord16<X>>{});
}

// Block-per-row kernels for rows too long for the register layout: x is read twice.
template <class X, class W>
__global__ void rmsnorm_forward_kernel(const X* x, const W* w, float eps, std::int64_t n, X* y,
                                       float* rstd) {
  __shared__ float scratch[kThreads / 32];
  const X* xr = x + blockIdx.x * n;
  float sum = 0.0f;
  for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = to_float(xr[j]);
    sum += v * v;
  }
  sum = block_sum(sum, scratch);
  const float inv = rsqrtf(sum / static_cast<float>(n) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = inv;
  X* yr = y + blockIdx.x * n;
  for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x)
    yr[j] = from_float<X>(to_float(xr[j]) * inv * to_float(w[j]));
}

// dx = rstd * (g - x * rstd^2 * mean(g * x)) with g = dy * w; dx may alias dy.
template <class X, class W>
__global__ void rmsnorm_backward_kernel(const X* dy, const X* x, const W* w, const float* rstd,
                                        std::int64_t n, X* dx) {
  // The row dot product in double, like the CPU reference: dx subtracts two nearly equal terms
  // when a row is dominated by one element.
  __shared__ double scratch[kThreads / 32];
  const std::int64_t base = blockIdx.x * n;
  double dot = 0.0;
  for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x)
    dot += static_cast<double>(to_float(dy[base + j])) * to_float(w[j]) * to_float(x[base + j]);
  dot = block_sum(dot, scratch);
  const float inv = rstd[blockIdx.x];
  const float c = static_cast<float>(dot / static_cast<double>(n)) * inv * inv;
  for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x)
    dx[base + j] =
        from_float<X>(inv * (to_float(dy[base + j]) * to_float(w[j]) - to_float(x[base + j]) * c));
}

}  // namespace

void CudaBackend::bias_backward(const Tensor& dy, Tensor& dbias) {
  check_on_device(dy, "bias_backward");
  check_on_device(dbias, "bias_backward");
  const std::int64_t cols = dbias.numel();
  MM_ASSERT(dy.rank() >= 1 && dy.dim(-1) == cols, "bias_backward: ", shape_string(dy.shape()));
  const std::int64_t rows = cols == 0 ? 0 : dy.numel() / cols;
  dispatch_float(dy.dtype(), "bias_backward", [&](auto t) {
    using T = decltype(t);
    column_sums(*this, BiasTerm<T>{cptr<T>(dy), cols}, rows, cols, dbias);
  });
}

const char* kernel_name(RmsNormKernel kernel) {
  switch (kernel) {
    case RmsNormKernel::rows:
      return "rows";
    case RmsNormKernel::warp:
      return "warp";
    case RmsNormKernel::warp_prefetch:
      return "warp_prefetch";
    case RmsNormKernel::warp_prefetch_l1w:
      return "warp_prefetch_l1w";
    case RmsNormKernel::warp_pair:
      return "warp_pair";
    case RmsNormKernel::warp_quad:
      return "warp_quad";
    case RmsNormKernel::bulk:
      return "bulk";
  }
  return "?";
}

RmsNormKernel default_rmsnorm_backward(std::int64_t n, DType dtype) {
  return dtype == DType::bf16 && n > 2048 && n <= 4096 ? RmsNormKernel::bulk
                                                       : RmsNormKernel::warp_prefetch;
}

namespace {

WarpNormOptions warp_options(RmsNormKernel kernel) {
  WarpNormOptions options;
  options.prefetch = kernel != RmsNormKernel::warp;
  options.shared_weight = kernel != RmsNormKernel::warp_prefetch_l1w;
  options.row_warps = kernel == RmsNormKernel::warp_quad   ? 4
                      : kernel == RmsNormKernel::warp_pair ? 2
                                                           : 1;
  return options;
}

}  // namespace

void rmsnorm_forward_with(RmsNormKernel kernel, CudaBackend& backend, const Tensor& x,
                          const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  check_all_on_device("rmsnorm_forward", x, w, y, rstd);
  const std::int64_t n = w.numel();
  MM_ASSERT(x.rank() >= 1 && x.dim(-1) == n, "rmsnorm x ", shape_string(x.shape()), " w ",
            shape_string(w.shape()));
  const std::int64_t rows = n == 0 ? 0 : x.numel() / n;
  MM_ASSERT(y.numel() == x.numel() && rstd.numel() == rows && y.dtype() == x.dtype() &&
                rstd.dtype() == DType::f32,
            "rmsnorm y ", shape_string(y.shape()), " rstd ", shape_string(rstd.shape()));
  require(eps >= 0.0f && std::isfinite(eps), "rms_norm_eps ", eps, " must be finite and >= 0");
  if (rows == 0) return;
  MM_ASSERT(rows < (std::int64_t{1} << 31), "rmsnorm rows ", rows);
  if (kernel != RmsNormKernel::rows &&
      rmsnorm_forward_warp(warp_options(kernel), backend, x, w, eps, rows, n, y, rstd))
    return;
  dispatch_float(x.dtype(), "rmsnorm_forward", [&](auto xt) {
    using X = decltype(xt);
    dispatch_float(w.dtype(), "rmsnorm_forward", [&](auto wt) {
      using W = decltype(wt);
      const bool wide = n % kPerWord16<X> == 0 && aligned16(x.raw(), w.raw(), y.raw());
      const RowLayout layout = forward_layout(n, wide, kPerWord16<X>);
      if (!layout.fits) {
        rmsnorm_forward_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
            cptr<X>(x), cptr<W>(w), eps, n, mptr<X>(y), mptr<float>(rstd));
        return;
      }
      const auto blocks = static_cast<unsigned>((rows + layout.groups() - 1) / layout.groups());
      dispatch_layout<X, 1, 4, 8>(layout, [&](auto vec, auto runs) {
        rmsnorm_forward_rows_kernel<X, W, decltype(vec)::value, decltype(runs)::value>
            <<<blocks, kRowThreads>>>(cptr<X>(x), cptr<W>(w), eps, rows, n, layout.warps_per_row,
                                      mptr<X>(y), mptr<float>(rstd));
      });
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward_with(RmsNormKernel kernel, CudaBackend& backend, const Tensor& dy,
                           const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                           Tensor& dw) {
  check_all_on_device("rmsnorm_backward", dy, x, w, rstd, dx, dw);
  const std::int64_t n = w.numel();
  MM_ASSERT(x.rank() >= 1 && x.dim(-1) == n && dw.numel() == n, "rmsnorm_backward x ",
            shape_string(x.shape()), " w ", shape_string(w.shape()), " dw ",
            shape_string(dw.shape()));
  const std::int64_t rows = n == 0 ? 0 : x.numel() / n;
  MM_ASSERT(dy.numel() == x.numel() && dx.numel() == x.numel() && rstd.numel() == rows &&
                dy.dtype() == x.dtype() && dx.dtype() == x.dtype(),
            "rmsnorm_backward dy ", shape_string(dy.shape()), " dx ", shape_string(dx.shape()),
            " rstd ", shape_string(rstd.shape()));
  if (rows == 0) return;
  MM_ASSERT(rows < (std::int64_t{1} << 31), "rmsnorm_backward rows ", rows);
  if (kernel == RmsNormKernel::bulk &&
      rmsnorm_backward_bulk(backend, dy, x, w, rstd, nullptr, rows, n, dx, dw))
    return;
  if (kernel != RmsNormKernel::rows &&
      rmsnorm_backward_warp(warp_options(kernel), backend, dy, x, w, rstd, rows, n, dx, dw))
    return;
  dispatch_float(x.dtype(), "rmsnorm_backward", [&](auto xt) {
    using X = decltype(xt);
    const bool wide = n % kPerWord16<X> == 0 && aligned16(dy.raw(), x.raw(), w.raw(), dx.raw());
    const RowLayout layout = backward_layout(n, wide, kPerWord16<X>);
    if (layout.fits) {
      const std::int64_t chunks = row_chunks(rows);
      Tensor partial = backend.empty({chunks, n});
      const std::size_t shared =
          layout.groups() > 1 ? static_cast<std::size_t>(n) * sizeof(float) : 0;
      dispatch_float(w.dtype(), "rmsnorm_backward", [&](auto wt) {
        using W = decltype(wt);
        dispatch_layout<X, 1, 2, 4>(layout, [&](auto vec, auto runs) {
          rmsnorm_backward_rows_kernel<X, W, decltype(vec)::value, decltype(runs)::value>
              <<<static_cast<unsigned>(chunks), kRowThreads, shared>>>(
                  cptr<X>(dy), cptr<X>(x), cptr<W>(w), cptr<float>(rstd), rows, n,
                  layout.warps_per_row, mptr<X>(dx), mptr<float>(partial));
        });
      });
      MM_CUDA_CHECK_LAUNCH();
      finish_column_sums(partial, chunks, n, dw);
      return;
    }
    // dw first: dx may alias dy.
    column_sums(backend, NormWeightTerm<X>{cptr<X>(dy), cptr<X>(x), cptr<float>(rstd), n}, rows, n,
                dw);
    dispatch_float(w.dtype(), "rmsnorm_backward", [&](auto wt) {
      using W = decltype(wt);
      rmsnorm_backward_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
          cptr<X>(dy), cptr<X>(x), cptr<W>(w), cptr<float>(rstd), n, mptr<X>(dx));
    });
    MM_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                                  Tensor& rstd) {
  rmsnorm_forward_with(kDefaultRmsNormForward, *this, x, w, eps, y, rstd);
}

void CudaBackend::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                   const Tensor& rstd, Tensor& dx, Tensor& dw) {
  rmsnorm_backward_with(default_rmsnorm_backward(w.numel(), x.dtype()), *this, dy, x, w, rstd, dx,
                        dw);
}

// The fused ops run only where every check of the composition would pass and the default kernel
// is a warp kernel that takes the shape; anywhere else they run the composition itself, so that
// its errors and its bits stay as they are.
void CudaBackend::add_rmsnorm_forward(const Tensor& x, Tensor& r, const Tensor& w, float eps,
                                      Tensor& y, Tensor& rstd) {
  check_all_on_device("add_rmsnorm_forward", x, r, w, y, rstd);
  const std::int64_t n = w.numel();
  const std::int64_t rows = n == 0 ? 0 : r.numel() / n;
  const bool fits = kDefaultRmsNormForward != RmsNormKernel::rows && rows > 0 &&
                    rows < (std::int64_t{1} << 31) && r.rank() >= 1 && r.dim(-1) == n &&
                    x.numel() == r.numel() && x.dtype() == r.dtype() && y.numel() == r.numel() &&
                    y.dtype() == r.dtype() && rstd.numel() == rows && rstd.dtype() == DType::f32 &&
                    eps >= 0.0f && std::isfinite(eps);
  if (fits && add_rmsnorm_forward_warp(warp_options(kDefaultRmsNormForward), *this, x, r, w, eps,
                                       rows, n, y, rstd))
    return;
  Backend::add_rmsnorm_forward(x, r, w, eps, y, rstd);
}

void rmsnorm_backward_add_with(RmsNormKernel kernel, CudaBackend& backend, const Tensor& dy,
                               const Tensor& x, const Tensor& w, const Tensor& rstd,
                               const Tensor& residual_grad, Tensor& dx, Tensor& dw) {
  check_all_on_device("rmsnorm_backward_add", dy, x, w, rstd, residual_grad, dx, dw);
  const std::int64_t n = w.numel();
  const std::int64_t rows = n == 0 ? 0 : x.numel() / n;
  const bool fits = kernel != RmsNormKernel::rows && rows > 0 && rows < (std::int64_t{1} << 31) &&
                    x.rank() >= 1 && x.dim(-1) == n && dw.numel() == n && dy.numel() == x.numel() &&
                    dx.numel() == x.numel() && rstd.numel() == rows && dy.dtype() == x.dtype() &&
                    dx.dtype() == x.dtype() && residual_grad.numel() == dx.numel() &&
                    residual_grad.dtype() == dx.dtype();
  if (fits && kernel == RmsNormKernel::bulk &&
      rmsnorm_backward_bulk(backend, dy, x, w, rstd, &residual_grad, rows, n, dx, dw))
    return;
  if (fits && rmsnorm_backward_add_warp(warp_options(kernel), backend, dy, x, w, rstd,
                                        residual_grad, rows, n, dx, dw))
    return;
  rmsnorm_backward_with(kernel, backend, dy, x, w, rstd, dx, dw);
  backend.axpy(1.0f, residual_grad, dx);
}

void CudaBackend::rmsnorm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w,
                                       const Tensor& rstd, const Tensor& residual_grad, Tensor& dx,
                                       Tensor& dw) {
  rmsnorm_backward_add_with(default_rmsnorm_backward(w.numel(), x.dtype()), *this, dy, x, w, rstd,
                            residual_grad, dx, dw);
}

}  // namespace metamorph::cuda

// RMSNorm and the bias gradient of the CUDA backend. The weight/bias gradients are column sums
// over all rows, done in two passes (per chunk of rows, then over the chunks in order) so the
// result is the same bits every run without atomics.
#include <cmath>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

namespace {

constexpr std::int64_t kRowsPerChunk = 64;

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

template <class Out>
__global__ void column_finish_kernel(const float* partial, std::int64_t chunks, std::int64_t cols,
                                     Out* out) {
  const std::int64_t c = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (std::int64_t k = 0; k < chunks; ++k) sum += partial[k * cols + c];
  out[c] = from_float<Out>(to_float(out[c]) + sum);
}

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

// out[c] += sum_r term(r, c), in a fixed order.
template <class Term>
void column_sums(CudaBackend& backend, Term term, std::int64_t rows, std::int64_t cols,
                 Tensor& out) {
  if (rows == 0 || cols == 0) return;
  const std::int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  MM_ASSERT(chunks < 65536, "column_sums over ", rows, " rows");
  Tensor partial = backend.empty({chunks, cols});
  const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
                  static_cast<unsigned>(chunks));
  column_partial_kernel<<<grid, kThreads>>>(term, rows, cols, mptr<float>(partial));
  MM_CUDA_CHECK_LAUNCH();
  dispatch_float(out.dtype(), "column sum output", [&](auto ot) {
    using O = decltype(ot);
    column_finish_kernel<<<static_cast<unsigned>((cols + kThreads - 1) / kThreads), kThreads>>>(
        cptr<float>(partial), chunks, cols, mptr<O>(out));
  });
  MM_CUDA_CHECK_LAUNCH();
}

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

void CudaBackend::rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                                  Tensor& rstd) {
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
  dispatch_float(x.dtype(), "rmsnorm_forward", [&](auto xt) {
    using X = decltype(xt);
    dispatch_float(w.dtype(), "rmsnorm_forward", [&](auto wt) {
      using W = decltype(wt);
      rmsnorm_forward_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
          cptr<X>(x), cptr<W>(w), eps, n, mptr<X>(y), mptr<float>(rstd));
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                   const Tensor& rstd, Tensor& dx, Tensor& dw) {
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
  dispatch_float(x.dtype(), "rmsnorm_backward", [&](auto xt) {
    using X = decltype(xt);
    // dw first: dx may alias dy.
    column_sums(*this, NormWeightTerm<X>{cptr<X>(dy), cptr<X>(x), cptr<float>(rstd), n}, rows, n,
                dw);
    dispatch_float(w.dtype(), "rmsnorm_backward", [&](auto wt) {
      using W = decltype(wt);
      rmsnorm_backward_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
          cptr<X>(dy), cptr<X>(x), cptr<W>(w), cptr<float>(rstd), n, mptr<X>(dx));
    });
    MM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace metamorph::cuda

// Elementwise ops and reductions of the CUDA backend. Each walks its tensors in runs of kRun
// elements with wide loads and stores when every pointer is 16-byte aligned (cuda_vector_access),
// element by element otherwise and for the tail.
#include <cmath>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

// Blocks of the first reduction pass: a function of n only, so the summation order (and the
// bits of the result) do not depend on the device.
constexpr std::int64_t kReduceBlocks = 1024;

// f32 and bf16 (value rounded like from_float); the integer dtypes use fill_kernel.
template <class T>
__global__ void fill_float_kernel(T* x, std::int64_t n, float value, bool vectorised) {
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float v[W];
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = value;
    store_run<W>(x + i, v);
  });
}

template <class T>
__global__ void fill_kernel(T* x, std::int64_t n, T value) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    x[i] = value;
}

template <class S, class D>
__global__ void convert_kernel(const S* src, D* dst, std::int64_t n, bool vectorised) {
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float v[W];
    load_run<W>(src + i, v);
    store_run<W>(dst + i, v);
  });
}

template <class X, class Y>
__global__ void axpy_kernel(float alpha, const X* x, Y* y, std::int64_t n, bool vectorised) {
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float xv[W], yv[W];
    load_run<W>(x + i, xv);
    load_run<W>(y + i, yv);
#pragma unroll
    for (int k = 0; k < W; ++k) yv[k] += alpha * xv[k];
    store_run<W>(y + i, yv);
  });
}

template <class T>
__global__ void scale_kernel(T* x, float alpha, std::int64_t n, bool vectorised) {
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float v[W];
    load_run<W>(x + i, v);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] *= alpha;
    store_run<W>(x + i, v);
  });
}

template <class T>
__global__ void sum_squares_kernel(const T* x, std::int64_t n, bool vectorised, double* partial) {
  __shared__ double scratch[kThreads / 32];
  double sum = 0.0;
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float v[W];
    load_run<W>(x + i, v);
#pragma unroll
    for (int k = 0; k < W; ++k) sum += static_cast<double>(v[k]) * v[k];
  });
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void sum_doubles_kernel(const double* values, std::int64_t n, double* out) {
  __shared__ double scratch[1024 / 32];
  double sum = 0.0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += values[i];
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) *out = sum;
}

// Integer flag: the order of the (idempotent) writes cannot change the result.
template <class T>
__global__ void all_finite_kernel(const T* x, std::int64_t n, bool vectorised, int* nonfinite) {
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float v[W];
    load_run<W>(x + i, v);
    bool finite = true;
#pragma unroll
    for (int k = 0; k < W; ++k) finite = finite && isfinite(v[k]);
    if (!finite) *nonfinite = 1;
  });
}

// Vectorised only when cols is a multiple of kRun, so a run never crosses a row.
template <class X, class B>
__global__ void add_bias_kernel(X* x, const B* bias, std::int64_t rows, std::int64_t cols,
                                bool vectorised) {
  for_each_run(rows * cols, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float xv[W], bv[W];
    load_run<W>(x + i, xv);
    load_run<W>(bias + i % cols, bv);
#pragma unroll
    for (int k = 0; k < W; ++k) xv[k] += bv[k];
    store_run<W>(x + i, xv);
  });
}

template <class I, class O>
__global__ void swiglu_forward_kernel(const I* gate, const I* up, O* out, std::int64_t n,
                                      bool vectorised) {
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float g[W], u[W], o[W];
    load_run<W>(gate + i, g);
    load_run<W>(up + i, u);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float s = 1.0f / (1.0f + __expf(-g[k]));
      o[k] = g[k] * s * u[k];
    }
    store_run<W>(out + i, o);
  });
}

template <class T>
__global__ void swiglu_backward_kernel(const T* dout, const T* gate, const T* up, T* dgate, T* dup,
                                       std::int64_t n, bool vectorised) {
  for_each_run(n, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    // Read the whole run first: dgate/dup may alias gate/up.
    float g[W], u[W], d[W];
    load_run<W>(gate + i, g);
    load_run<W>(up + i, u);
    load_run<W>(dout + i, d);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float s = 1.0f / (1.0f + __expf(-g[k]));
      const float dg = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
      u[k] = d[k] * g[k] * s;  // dup
      g[k] = dg;
    }
    store_run<W>(dgate + i, g);
    store_run<W>(dup + i, u);
  });
}

void check_same_numel(const Tensor& a, const Tensor& b, const char* op) {
  MM_ASSERT(a.numel() == b.numel(), op, ": ", shape_string(a.shape()), " vs ",
            shape_string(b.shape()));
}

}  // namespace

void CudaBackend::synchronize() {
  MM_CUDA_CHECK(cudaDeviceSynchronize());
}

void CudaBackend::fill(Tensor& x, float value) {
  check_on_device(x, "fill");
  const std::int64_t n = x.numel();
  if (n == 0) return;
  switch (x.dtype()) {
    case DType::f32:
    case DType::bf16:
      dispatch_float(x.dtype(), "fill", [&](auto t) {
        using T = decltype(t);
        const bool vec = aligned16(x.raw());
        fill_float_kernel<<<grid_for_runs(n, vec), kThreads>>>(mptr<T>(x), n, value, vec);
      });
      break;
    case DType::i32:
      fill_kernel<<<grid_for(n), kThreads>>>(mptr<std::int32_t>(x), n,
                                             static_cast<std::int32_t>(value));
      break;
    case DType::i64:
      fill_kernel<<<grid_for(n), kThreads>>>(mptr<std::int64_t>(x), n,
                                             static_cast<std::int64_t>(value));
      break;
  }
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::copy(const Tensor& src, Tensor& dst) {
  check_on_device(src, "copy");
  check_on_device(dst, "copy");
  check_same_numel(src, dst, "copy");
  if (src.numel() == 0) return;
  if (src.dtype() == dst.dtype()) {
    MM_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.bytes(), cudaMemcpyDeviceToDevice, 0));
    return;
  }
  const std::int64_t n = src.numel();
  dispatch_float(src.dtype(), "copy", [&](auto s) {
    using S = decltype(s);
    dispatch_float(dst.dtype(), "copy", [&](auto d) {
      using D = decltype(d);
      const bool vec = aligned16(src.raw(), dst.raw());
      convert_kernel<<<grid_for_runs(n, vec), kThreads>>>(cptr<S>(src), mptr<D>(dst), n, vec);
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::axpy(float alpha, const Tensor& x, Tensor& y) {
  check_on_device(x, "axpy");
  check_on_device(y, "axpy");
  check_same_numel(x, y, "axpy");
  const std::int64_t n = x.numel();
  if (n == 0) return;
  dispatch_float(x.dtype(), "axpy", [&](auto xt) {
    using X = decltype(xt);
    dispatch_float(y.dtype(), "axpy", [&](auto yt) {
      using Y = decltype(yt);
      const bool vec = aligned16(x.raw(), y.raw());
      axpy_kernel<<<grid_for_runs(n, vec), kThreads>>>(alpha, cptr<X>(x), mptr<Y>(y), n, vec);
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::scale(Tensor& x, float alpha) {
  check_on_device(x, "scale");
  const std::int64_t n = x.numel();
  if (n == 0) return;
  dispatch_float(x.dtype(), "scale", [&](auto t) {
    using T = decltype(t);
    const bool vec = aligned16(x.raw());
    scale_kernel<<<grid_for_runs(n, vec), kThreads>>>(mptr<T>(x), alpha, n, vec);
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::sum_doubles_on_device(const Tensor& values, double* out) {
  check_on_device(values, "sum_doubles");
  MM_ASSERT(values.dtype() == DType::i64, "sum_doubles wants doubles in an i64 tensor");
  const std::int64_t n = static_cast<std::int64_t>(values.bytes() / sizeof(double));
  sum_doubles_kernel<<<1, 1024>>>(static_cast<const double*>(values.raw()), n, out);
  MM_CUDA_CHECK_LAUNCH();
}

double CudaBackend::sum_doubles(const Tensor& values) {
  if (values.bytes() == 0) return 0.0;
  Tensor out = empty({1}, DType::i64);  // 8 bytes holding one double
  sum_doubles_on_device(values, static_cast<double*>(out.raw()));
  double result = 0.0;
  MM_CUDA_CHECK(cudaMemcpy(&result, out.raw(), sizeof result, cudaMemcpyDeviceToHost));
  return result;
}

void CudaBackend::sum_squares_into(const Tensor& x, Tensor& sums, std::int64_t index) {
  check_all_on_device("sum_squares", x, sums);
  double* out = sum_slot(sums, index);
  const std::int64_t n = x.numel();
  if (n == 0) {
    MM_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double)));  // all-zero bits: +0.0
    return;
  }
  const std::int64_t blocks = std::min<std::int64_t>(kReduceBlocks, (n + kThreads - 1) / kThreads);
  Tensor partial = empty({blocks}, DType::i64);  // doubles
  dispatch_float(x.dtype(), "sum_squares", [&](auto t) {
    using T = decltype(t);
    sum_squares_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(
        cptr<T>(x), n, aligned16(x.raw()), static_cast<double*>(partial.raw()));
  });
  MM_CUDA_CHECK_LAUNCH();
  sum_doubles_on_device(partial, out);
}

double CudaBackend::sum_squares(const Tensor& x) {
  if (x.numel() == 0) return 0.0;
  Tensor out = empty({1}, DType::i64);  // one double
  sum_squares_into(x, out, 0);
  double result = 0.0;
  MM_CUDA_CHECK(cudaMemcpy(&result, out.raw(), sizeof result, cudaMemcpyDeviceToHost));
  return result;
}

bool CudaBackend::all_finite(const Tensor& x) {
  check_on_device(x, "all_finite");
  const std::int64_t n = x.numel();
  if (n == 0) return true;
  Tensor flag = zeros({1}, DType::i32);
  dispatch_float(x.dtype(), "all_finite", [&](auto t) {
    using T = decltype(t);
    const bool vec = aligned16(x.raw());
    all_finite_kernel<<<grid_for_runs(n, vec), kThreads>>>(cptr<T>(x), n, vec, mptr<int>(flag));
  });
  MM_CUDA_CHECK_LAUNCH();
  int nonfinite = 0;
  MM_CUDA_CHECK(cudaMemcpy(&nonfinite, flag.raw(), sizeof nonfinite, cudaMemcpyDeviceToHost));
  return nonfinite == 0;
}

void CudaBackend::add_bias(Tensor& x, const Tensor& bias) {
  check_on_device(x, "add_bias");
  check_on_device(bias, "add_bias");
  const std::int64_t cols = bias.numel();
  MM_ASSERT(x.rank() >= 1 && x.dim(-1) == cols, "add_bias: ", shape_string(x.shape()), " + ",
            shape_string(bias.shape()));
  const std::int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  if (rows * cols == 0) return;
  dispatch_float(x.dtype(), "add_bias", [&](auto xt) {
    using X = decltype(xt);
    dispatch_float(bias.dtype(), "add_bias", [&](auto bt) {
      using B = decltype(bt);
      const bool vec = cols % kRun == 0 && aligned16(x.raw(), bias.raw());
      add_bias_kernel<<<grid_for_runs(rows * cols, vec), kThreads>>>(mptr<X>(x), cptr<B>(bias),
                                                                     rows, cols, vec);
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  check_all_on_device("swiglu_forward", gate, up, out);
  MM_ASSERT(gate.shape() == up.shape() && out.numel() == gate.numel() && gate.dtype() == up.dtype(),
            "swiglu gate ", shape_string(gate.shape()), " up ", shape_string(up.shape()), " out ",
            shape_string(out.shape()));
  const std::int64_t n = gate.numel();
  if (n == 0) return;
  dispatch_float(gate.dtype(), "swiglu_forward", [&](auto it) {
    using I = decltype(it);
    dispatch_float(out.dtype(), "swiglu_forward", [&](auto ot) {
      using O = decltype(ot);
      const bool vec = aligned16(gate.raw(), up.raw(), out.raw());
      swiglu_forward_kernel<<<grid_for_runs(n, vec), kThreads>>>(cptr<I>(gate), cptr<I>(up),
                                                                 mptr<O>(out), n, vec);
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                                  Tensor& dgate, Tensor& dup) {
  check_all_on_device("swiglu_backward", dout, gate, up, dgate, dup);
  MM_ASSERT(gate.shape() == up.shape() && dout.numel() == gate.numel() &&
                dgate.numel() == gate.numel() && dup.numel() == gate.numel(),
            "swiglu_backward gate ", shape_string(gate.shape()), " dout ",
            shape_string(dout.shape()));
  for (const Tensor* t :
       {&dout, &up, static_cast<const Tensor*>(&dgate), static_cast<const Tensor*>(&dup)})
    MM_ASSERT(t->dtype() == gate.dtype(), "swiglu_backward wants one dtype, got ",
              dtype_name(t->dtype()), " and ", dtype_name(gate.dtype()));
  const std::int64_t n = gate.numel();
  if (n == 0) return;
  dispatch_float(gate.dtype(), "swiglu_backward", [&](auto t) {
    using T = decltype(t);
    const bool vec = aligned16(dout.raw(), gate.raw(), up.raw(), dgate.raw(), dup.raw());
    swiglu_backward_kernel<<<grid_for_runs(n, vec), kThreads>>>(
        cptr<T>(dout), cptr<T>(gate), cptr<T>(up), mptr<T>(dgate), mptr<T>(dup), n, vec);
  });
  MM_CUDA_CHECK_LAUNCH();
}

}  // namespace metamorph::cuda

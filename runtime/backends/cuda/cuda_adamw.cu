// AdamW of the CUDA backend: the arithmetic of the CPU reference (torch.optim.AdamW, non-fused),
// element by element on f32 masters and moments; the gradient may be bf16.
#include <cmath>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

namespace {

struct AdamWScalars {
  float step_size, bc2_sqrt, decay, w1, beta2, w2, eps;
};

// With `rounded`, the new master is also written rounded to V (the bf16 weights), in the same pass:
// a separate copy would read every master again.
template <class G, class V>
__global__ void adamw_kernel(float* p, const G* g, float* m, float* v, std::int64_t n,
                             AdamWScalars s, V* rounded) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const float gi = to_float(g[i]);
    float pi = p[i] * s.decay;
    const float mi =
        fabsf(s.w1) < 0.5f ? m[i] + s.w1 * (gi - m[i]) : gi - (gi - m[i]) * (1.0f - s.w1);
    const float vi = v[i] * s.beta2 + s.w2 * gi * gi;
    const float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
    pi += (-s.step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
    if (rounded != nullptr) rounded[i] = from_float<V>(pi);
  }
}

// Checks the operands and hyperparameters; the kernel's scalars, in double on the host and
// rounded once to float, exactly as the CPU backend does.
AdamWScalars adamw_scalars(const Tensor& param, const Tensor& grad, const Tensor& m,
                           const Tensor& v, const AdamWHyper& hyper) {
  check_all_on_device("adamw_step", param, grad, m, v);
  const std::int64_t n = param.numel();
  MM_ASSERT(grad.numel() == n && m.numel() == n && v.numel() == n, "adamw param ",
            shape_string(param.shape()), " grad ", shape_string(grad.shape()), " m ",
            shape_string(m.shape()), " v ", shape_string(v.shape()));
  MM_ASSERT(param.dtype() == DType::f32 && m.dtype() == DType::f32 && v.dtype() == DType::f32,
            "AdamW keeps f32 masters and moments");
  require(hyper.step >= 1, "AdamW step ", hyper.step, " must be >= 1 (it is 1-based)");
  require(hyper.lr >= 0.0f && std::isfinite(hyper.lr), "learning rate ", hyper.lr,
          " must be finite and >= 0");
  require(hyper.beta1 >= 0.0f && hyper.beta1 < 1.0f && hyper.beta2 >= 0.0f && hyper.beta2 < 1.0f,
          "AdamW betas (", hyper.beta1, ", ", hyper.beta2, ") must lie in [0, 1)");
  require(hyper.eps > 0.0f, "AdamW eps ", hyper.eps, " must be positive");
  require(hyper.weight_decay >= 0.0f, "weight decay ", hyper.weight_decay, " must be >= 0");
  const double step = static_cast<double>(hyper.step);
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(hyper.beta1), step);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(hyper.beta2), step);
  AdamWScalars s{};
  s.step_size = static_cast<float>(static_cast<double>(hyper.lr) / bias_correction1);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.decay = static_cast<float>(1.0 - static_cast<double>(hyper.lr) * hyper.weight_decay);
  s.w1 = static_cast<float>(1.0 - static_cast<double>(hyper.beta1));
  s.beta2 = hyper.beta2;
  s.w2 = static_cast<float>(1.0 - static_cast<double>(hyper.beta2));
  s.eps = hyper.eps;
  return s;
}

template <class V>
void launch_adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWScalars& s,
                  V* rounded) {
  const std::int64_t n = param.numel();
  if (n == 0) return;
  dispatch_float(grad.dtype(), "adamw_step", [&](auto t) {
    using G = decltype(t);
    adamw_kernel<<<grid_for(n), kThreads>>>(mptr<float>(param), cptr<G>(grad), mptr<float>(m),
                                            mptr<float>(v), n, s, rounded);
  });
  MM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void CudaBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                             const AdamWHyper& hyper) {
  const AdamWScalars s = adamw_scalars(param, grad, m, v, hyper);
  launch_adamw(param, grad, m, v, s, static_cast<float*>(nullptr));
}

void CudaBackend::adamw_step_rounded(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v,
                                     const AdamWHyper& hyper, Tensor& value) {
  const AdamWScalars s = adamw_scalars(master, grad, m, v, hyper);
  check_on_device(value, "adamw_step_rounded");
  MM_ASSERT(value.numel() == master.numel() && !value.same_storage(master),
            "adamw_step_rounded value ", shape_string(value.shape()), " for master ",
            shape_string(master.shape()));
  dispatch_float(value.dtype(), "adamw_step_rounded",
                 [&](auto t) { launch_adamw(master, grad, m, v, s, mptr<decltype(t)>(value)); });
}

}  // namespace metamorph::cuda

// AdamW of the CPU backend, step for step the arithmetic of torch.optim.AdamW (non-fused,
// amsgrad off): decay first, moments by lerp/addcmul, eps after the bias-corrected sqrt.
#include <cmath>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

void CpuBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                            const AdamWHyper& hyper) {
  const std::int64_t n = param.numel();
  MM_ASSERT(grad.numel() == n && m.numel() == n && v.numel() == n, "adamw param ",
            shape_string(param.shape()), " grad ", shape_string(grad.shape()), " m ",
            shape_string(m.shape()), " v ", shape_string(v.shape()));
  require(hyper.step >= 1, "AdamW step ", hyper.step, " must be >= 1 (it is 1-based)");
  require(hyper.lr >= 0.0f && std::isfinite(hyper.lr), "learning rate ", hyper.lr,
          " must be finite and >= 0");
  require(hyper.beta1 >= 0.0f && hyper.beta1 < 1.0f && hyper.beta2 >= 0.0f && hyper.beta2 < 1.0f,
          "AdamW betas (", hyper.beta1, ", ", hyper.beta2, ") must lie in [0, 1)");
  require(hyper.eps > 0.0f, "AdamW eps ", hyper.eps, " must be positive");
  require(hyper.weight_decay >= 0.0f, "weight decay ", hyper.weight_decay, " must be >= 0");

  // Scalars in double like torch's Python-float arithmetic, then rounded once to float.
  const double step = static_cast<double>(hyper.step);
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(hyper.beta1), step);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(hyper.beta2), step);
  const float step_size = static_cast<float>(static_cast<double>(hyper.lr) / bias_correction1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float decay = static_cast<float>(1.0 - static_cast<double>(hyper.lr) * hyper.weight_decay);
  const float w1 = static_cast<float>(1.0 - static_cast<double>(hyper.beta1));
  const float beta2 = hyper.beta2;
  const float w2 = static_cast<float>(1.0 - static_cast<double>(hyper.beta2));
  const float eps = hyper.eps;

  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
#pragma omp parallel for if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    p[i] *= decay;
    // torch's lerp for weight < 0.5: m + w * (g - m)
    mp[i] = std::abs(w1) < 0.5f ? mp[i] + w1 * (gi - mp[i]) : gi - (gi - mp[i]) * (1.0f - w1);
    vp[i] = vp[i] * beta2 + w2 * gi * gi;
    const float denom = std::sqrt(vp[i]) / bc2_sqrt + eps;
    // addcdiv's order: param + (value * m) / denom
    p[i] += (-step_size * mp[i]) / denom;
  }
}

}  // namespace metamorph

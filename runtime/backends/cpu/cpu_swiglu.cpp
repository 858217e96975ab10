// SwiGLU of the CPU backend: out = silu(gate) * up, elementwise.
#include <cmath>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/backends/cpu/fast_exp.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
// Never NaN: for g << 0, e^-g saturates near 1.6e38 and the result is ~0.
inline float sigmoid(float g) {
  return 1.0f / (1.0f + fast_exp(-g));
}
}  // namespace

void CpuBackend::swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  MM_ASSERT(gate.shape() == up.shape() && out.numel() == gate.numel(), "swiglu gate ",
            shape_string(gate.shape()), " up ", shape_string(up.shape()), " out ",
            shape_string(out.shape()));
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  float* o = out.data<float>();
  const std::int64_t n = gate.numel();
#pragma omp parallel for if (n > 32768)
  for (std::int64_t i = 0; i < n; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
}

void CpuBackend::swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                                 Tensor& dgate, Tensor& dup) {
  MM_ASSERT(gate.shape() == up.shape() && dout.numel() == gate.numel() &&
                dgate.numel() == gate.numel() && dup.numel() == gate.numel(),
            "swiglu_backward gate ", shape_string(gate.shape()), " dout ",
            shape_string(dout.shape()));
  const float* d = dout.data<float>();
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  float* dg = dgate.data<float>();
  float* du = dup.data<float>();
  const std::int64_t n = gate.numel();
#pragma omp parallel for if (n > 32768)
  for (std::int64_t i = 0; i < n; ++i) {
    // Read everything first: dgate/dup may alias gate/up.
    const float gi = g[i], ui = u[i], di = d[i];
    const float s = sigmoid(gi);
    // silu'(g) = s * (1 + g * (1 - s))
    dg[i] = di * ui * s * (1.0f + gi * (1.0f - s));
    du[i] = di * gi * s;
  }
}

}  // namespace metamorph

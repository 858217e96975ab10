// Layer ops of the CPU backend (RMSNorm, RoPE, attention, SwiGLU, cross-entropy, AdamW).
#include <stdexcept>

#include "runtime/backends/cpu/cpu_backend.hpp"

namespace metamorph {

namespace {
[[noreturn]] void unbuilt(const char* op) {
  throw std::logic_error(std::string("CpuBackend::") + op + " is not built yet");
}
}  // namespace

void CpuBackend::rmsnorm_forward(const Tensor&, const Tensor&, float, Tensor&, Tensor&) {
  unbuilt("rmsnorm_forward");
}
void CpuBackend::rmsnorm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  Tensor&, Tensor&) {
  unbuilt("rmsnorm_backward");
}
void CpuBackend::rope(Tensor&, const Tensor&, float, bool) { unbuilt("rope"); }
void CpuBackend::attention_forward(const Tensor&, const Tensor&, const Tensor&,
                                   const AttentionMask&, float, Tensor&, Tensor&, std::int64_t) {
  unbuilt("attention_forward");
}
void CpuBackend::attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const Tensor&, const AttentionMask&, float,
                                    Tensor&, Tensor&, Tensor&, std::int64_t) {
  unbuilt("attention_backward");
}
void CpuBackend::swiglu_forward(const Tensor&, const Tensor&, Tensor&) { unbuilt("swiglu"); }
void CpuBackend::swiglu_backward(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&) {
  unbuilt("swiglu_backward");
}
double CpuBackend::cross_entropy_forward(const Tensor&, const Tensor&, std::int32_t, Tensor&) {
  unbuilt("cross_entropy_forward");
}
void CpuBackend::cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&, std::int32_t,
                                        float, Tensor&) {
  unbuilt("cross_entropy_backward");
}
void CpuBackend::adamw_step(Tensor&, const Tensor&, Tensor&, Tensor&, const AdamWHyper&) {
  unbuilt("adamw_step");
}

}  // namespace metamorph

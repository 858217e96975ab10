#pragma once
// A stand-in for a GPU backend on machines without one: the CPU reference's arithmetic on
// tensors tagged as device memory. Tensors from empty() carry Device::cuda; host_empty() gives
// host tensors (Device::cpu) from a separate arena; from_host/to_host copy between the two, as the
// CUDA backend does (never the identity). Every op checks that each tensor it is handed is a
// device tensor and throws std::logic_error naming the op otherwise, so code that hands an op a
// host tensor it forgot to upload (the way a GPU run would fail) fails here too, in a CPU test.
// The arithmetic is the CPU backend's (f32 activations), so results equal a CpuBackend run's bits.
//
// What it cannot see: host code that reads or writes a device tensor's data directly (on a GPU
// that is a crash or garbage, here it works). Dense models only: the MoE ops are not forwarded.
#include <cstring>
#include <stdexcept>
#include <string>

#include "runtime/backends/cpu/cpu_backend.hpp"

namespace metamorph::test {

class DeviceCheckingBackend final : public Backend {
 public:
  DeviceCheckingBackend() = default;
  Device device() const override { return Device::cuda; }
  Arena& arena() override { return device_arena_; }

  Tensor host_empty(const Shape& shape, DType dtype) override {
    return Tensor::empty(shape, dtype, host_arena_, Device::cpu);
  }
  Tensor to_host(const Tensor& x, DType dtype) override {
    on_device("to_host", x);
    require(x.dtype() == dtype, "the checking backend does not convert dtypes");
    Tensor out = host_empty(x.shape(), dtype);
    if (out.bytes() > 0) std::memcpy(out.raw(), x.raw(), out.bytes());
    return out;
  }
  Tensor from_host(const Tensor& host, DType dtype) override {
    if (host.device() != Device::cpu) throw std::logic_error("from_host of a device tensor");
    require(host.dtype() == dtype, "the checking backend does not convert dtypes");
    Tensor out = empty(host.shape(), dtype);
    if (out.bytes() > 0) std::memcpy(out.raw(), host.raw(), out.bytes());
    return out;
  }
  // Copies the host arena holds now (the device arena is arena()).
  std::size_t host_bytes_in_use() const { return host_arena_.bytes_in_use(); }

  void fill(Tensor& x, float value) override {
    on_device("fill", x);
    cpu_.fill(x, value);
  }
  void copy(const Tensor& src, Tensor& dst) override {
    on_device("copy", src, dst);
    cpu_.copy(src, dst);
  }
  void axpy(float alpha, const Tensor& x, Tensor& y) override {
    on_device("axpy", x, y);
    cpu_.axpy(alpha, x, y);
  }
  void scale(Tensor& x, float alpha) override {
    on_device("scale", x);
    cpu_.scale(x, alpha);
  }
  double sum_squares(const Tensor& x) override {
    on_device("sum_squares", x);
    return cpu_.sum_squares(x);
  }
  bool all_finite(const Tensor& x) override {
    on_device("all_finite", x);
    return cpu_.all_finite(x);
  }
  void add_bias(Tensor& x, const Tensor& bias) override {
    on_device("add_bias", x, bias);
    cpu_.add_bias(x, bias);
  }
  void bias_backward(const Tensor& dy, Tensor& dbias) override {
    on_device("bias_backward", dy, dbias);
    cpu_.bias_backward(dy, dbias);
  }
  void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
              float beta) override {
    on_device("matmul", a, b, c);
    cpu_.matmul(a, trans_a, b, trans_b, c, alpha, beta);
  }
  void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) override {
    on_device("embedding_forward", table, ids, out);
    cpu_.embedding_forward(table, ids, out);
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override {
    on_device("embedding_backward", ids, dout, dtable);
    cpu_.embedding_backward(ids, dout, dtable);
  }
  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                       Tensor& rstd) override {
    on_device("rmsnorm_forward", x, w, y, rstd);
    cpu_.rmsnorm_forward(x, w, eps, y, rstd);
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override {
    on_device("rmsnorm_backward", dy, x, w, rstd, dx, dw);
    cpu_.rmsnorm_backward(dy, x, w, rstd, dx, dw);
  }
  void rope(Tensor& x, const Tensor& positions, float theta, bool inverse) override {
    on_device("rope", x, positions);
    cpu_.rope(x, positions, theta, inverse);
  }
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionMask& mask, float scale, Tensor& out, Tensor& lse,
                         std::int64_t q_offset) override {
    on_device("attention_forward", q, k, v, out, lse);
    cpu_.attention_forward(q, k, v, mask, scale, out, lse, q_offset);
  }
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          std::int64_t q_offset) override {
    on_device("attention_backward", dout, q, k, v, out, lse, dq, dk, dv);
    cpu_.attention_backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv, q_offset);
  }
  void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override {
    on_device("swiglu_forward", gate, up, out);
    cpu_.swiglu_forward(gate, up, out);
  }
  void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                       Tensor& dup) override {
    on_device("swiglu_backward", dout, gate, up, dgate, dup);
    cpu_.swiglu_backward(dout, gate, up, dgate, dup);
  }
  double cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                               std::int32_t ignore_index, Tensor& lse) override {
    on_device("cross_entropy_forward", logits, targets, lse);
    return cpu_.cross_entropy_forward(logits, targets, ignore_index, lse);
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              std::int32_t ignore_index, float grad_scale,
                              Tensor& dlogits) override {
    on_device("cross_entropy_backward", logits, targets, lse, dlogits);
    cpu_.cross_entropy_backward(logits, targets, lse, ignore_index, grad_scale, dlogits);
  }
  void embedding_forward_sharded(const Tensor& table, const Tensor& ids, std::int64_t vocab_offset,
                                 Tensor& out) override {
    on_device("embedding_forward_sharded", table, ids, out);
    cpu_.embedding_forward_sharded(table, ids, vocab_offset, out);
  }
  void embedding_backward_sharded(const Tensor& ids, const Tensor& dout, std::int64_t vocab_offset,
                                  Tensor& dtable) override {
    on_device("embedding_backward_sharded", ids, dout, dtable);
    cpu_.embedding_backward_sharded(ids, dout, vocab_offset, dtable);
  }
  void row_max(const Tensor& x, Tensor& out) override {
    on_device("row_max", x, out);
    cpu_.row_max(x, out);
  }
  void cross_entropy_stats(const Tensor& logits, const Tensor& targets, std::int64_t vocab_offset,
                           const Tensor& max, Tensor& sum_exp, Tensor& target_logit) override {
    on_device("cross_entropy_stats", logits, targets, max, sum_exp, target_logit);
    cpu_.cross_entropy_stats(logits, targets, vocab_offset, max, sum_exp, target_logit);
  }
  double cross_entropy_finish(const Tensor& max, const Tensor& sum_exp, const Tensor& target_logit,
                              const Tensor& targets, std::int32_t ignore_index,
                              Tensor& lse) override {
    on_device("cross_entropy_finish", max, sum_exp, target_logit, targets, lse);
    return cpu_.cross_entropy_finish(max, sum_exp, target_logit, targets, ignore_index, lse);
  }
  void cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                      const Tensor& lse, std::int32_t ignore_index,
                                      std::int64_t vocab_offset, float grad_scale,
                                      Tensor& dlogits) override {
    on_device("cross_entropy_backward_sharded", logits, targets, lse, dlogits);
    cpu_.cross_entropy_backward_sharded(logits, targets, lse, ignore_index, vocab_offset,
                                        grad_scale, dlogits);
  }
  double weighted_cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& weights, std::int32_t ignore_index,
                                        Tensor& lse) override {
    on_device("weighted_cross_entropy_forward", logits, targets, weights, lse);
    return cpu_.weighted_cross_entropy_forward(logits, targets, weights, ignore_index, lse);
  }
  void weighted_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                       const Tensor& lse, const Tensor& weights,
                                       std::int32_t ignore_index, float grad_scale,
                                       Tensor& dlogits) override {
    on_device("weighted_cross_entropy_backward", logits, targets, lse, weights, dlogits);
    cpu_.weighted_cross_entropy_backward(logits, targets, lse, weights, ignore_index, grad_scale,
                                         dlogits);
  }
  double weighted_cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                       const Tensor& target_logit, const Tensor& targets,
                                       const Tensor& weights, std::int32_t ignore_index,
                                       Tensor& lse) override {
    on_device("weighted_cross_entropy_finish", max, sum_exp, target_logit, targets, weights, lse);
    return cpu_.weighted_cross_entropy_finish(max, sum_exp, target_logit, targets, weights,
                                              ignore_index, lse);
  }
  void weighted_cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                               const Tensor& lse, const Tensor& weights,
                                               std::int32_t ignore_index, std::int64_t vocab_offset,
                                               float grad_scale, Tensor& dlogits) override {
    on_device("weighted_cross_entropy_backward_sharded", logits, targets, lse, weights, dlogits);
    cpu_.weighted_cross_entropy_backward_sharded(logits, targets, lse, weights, ignore_index,
                                                 vocab_offset, grad_scale, dlogits);
  }
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                  const AdamWHyper& hyper) override {
    on_device("adamw_step", param, grad, m, v);
    cpu_.adamw_step(param, grad, m, v, hyper);
  }

 private:
  // Undefined tensors (optional arguments) pass.
  template <class... Ts>
  static void on_device(const char* op, const Ts&... tensors) {
    int index = 0;
    const auto check = [&](const Tensor& t) {
      if (t.defined() && t.device() != Device::cuda)
        throw std::logic_error(std::string(op) + ": argument " + std::to_string(index) +
                               " is a host tensor (it was never uploaded)");
      ++index;
    };
    (check(tensors), ...);
  }

  Arena device_arena_;
  Arena host_arena_;
  CpuBackend cpu_{device_arena_};
};

}  // namespace metamorph::test

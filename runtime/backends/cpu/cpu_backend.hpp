#pragma once
// The reference backend: fp32, OpenBLAS for GEMMs, OpenMP loops for the rest. Not final: a test
// derives a variant with bf16 weights (tests/mpi/zero1_masters_test.cpp).
#include "runtime/core/backend.hpp"

namespace metamorph {

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(Arena& arena) : arena_(arena) {}
  Device device() const override { return Device::cpu; }
  Arena& arena() override { return arena_; }

  void fill(Tensor& x, float value) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void axpy(float alpha, const Tensor& x, Tensor& y) override;
  void scale(Tensor& x, float alpha) override;
  double sum_squares(const Tensor& x) override;
  bool all_finite(const Tensor& x) override;
  void add_bias(Tensor& x, const Tensor& bias) override;
  void bias_backward(const Tensor& dy, Tensor& dbias) override;

  void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
              float beta) override;

  void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override;

  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                       Tensor& rstd) override;
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override;

  void rope(Tensor& x, const Tensor& positions, float theta, bool inverse) override;

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionMask& mask, float scale, Tensor& out, Tensor& lse,
                         std::int64_t q_offset) override;
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          std::int64_t q_offset) override;

  void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                       Tensor& dup) override;

  double cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                               std::int32_t ignore_index, Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              std::int32_t ignore_index, float grad_scale,
                              Tensor& dlogits) override;

  void embedding_forward_sharded(const Tensor& table, const Tensor& ids, std::int64_t vocab_offset,
                                 Tensor& out) override;
  void embedding_backward_sharded(const Tensor& ids, const Tensor& dout, std::int64_t vocab_offset,
                                  Tensor& dtable) override;
  void row_max(const Tensor& x, Tensor& out) override;
  void cross_entropy_stats(const Tensor& logits, const Tensor& targets, std::int64_t vocab_offset,
                           const Tensor& max, Tensor& sum_exp, Tensor& target_logit) override;
  double cross_entropy_finish(const Tensor& max, const Tensor& sum_exp, const Tensor& target_logit,
                              const Tensor& targets, std::int32_t ignore_index,
                              Tensor& lse) override;
  void cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                      const Tensor& lse, std::int32_t ignore_index,
                                      std::int64_t vocab_offset, float grad_scale,
                                      Tensor& dlogits) override;

  double weighted_cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                       const Tensor& target_logit, const Tensor& targets,
                                       const Tensor& weights, std::int32_t ignore_index,
                                       Tensor& lse) override;
  void weighted_cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                               const Tensor& lse, const Tensor& weights,
                                               std::int32_t ignore_index, std::int64_t vocab_offset,
                                               float grad_scale, Tensor& dlogits) override;
  double weighted_cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& weights, std::int32_t ignore_index,
                                        Tensor& lse) override;
  void weighted_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                       const Tensor& lse, const Tensor& weights,
                                       std::int32_t ignore_index, float grad_scale,
                                       Tensor& dlogits) override;

  void gather_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                   Tensor& dst) override;
  void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                        Tensor& dst) override;
  void row_dot(const Tensor& a, const Tensor& b, Tensor& out) override;

  RouterOutput router_forward(const Tensor& logits, const Tensor& bias,
                              const RouterSpec& spec) override;
  void router_backward(const Tensor& logits, const RouterOutput& routing, const RouterSpec& spec,
                       const Tensor& dgate_rows, const Tensor& slot_row, float loss_scale,
                       Tensor& dlogits) override;
  void moe_permute(const Tensor& expert, const Tensor& gate, const std::vector<std::int64_t>& kept,
                   Tensor& token_index, Tensor& row_gate, Tensor& slot_row) override;
  void moe_combine(const Tensor& rows, const Tensor& token_index, const Tensor& weights,
                   const Tensor& slot_row, Tensor& y, std::int64_t first_row = 0,
                   bool accumulate = true) override;
  void sigmoid_forward(const Tensor& x, Tensor& y) override;
  void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx) override;

  void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                  const AdamWHyper& hyper) override;

 private:
  Arena& arena_;
};

}  // namespace metamorph

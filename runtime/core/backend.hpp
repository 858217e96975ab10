#pragma once
// The ops every model is written against. The CPU backend (fp32, OpenBLAS, OpenMP) is the
// reference; the CUDA backend implements the same contract in bf16 with fp32 accumulation.
//
// Conventions: row-major contiguous tensors; "tokens" means the flattened batch*sequence
// dimension; gradients named d* are *accumulated* (+=) into when the doc says "accumulates",
// otherwise overwritten. Attention tensors are [batch, seq, heads, head_dim].
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

#include "runtime/core/arena.hpp"
#include "runtime/core/attention_mask.hpp"
#include "runtime/core/device_clock.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/moe_routing.hpp"
#include "runtime/core/row_groups.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph {

struct AdamWHyper {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: param -= lr * wd * param
  std::int64_t step = 1;      // 1-based, for bias correction
};

class StepTimers;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual Arena& arena() = 0;
  // Waits until every operation queued so far has finished (timings); the CPU runs them at once.
  virtual void synchronize() {}
  // A clock of marks on this backend's queue of work (StepTimers); the CPU's is the host's.
  virtual std::unique_ptr<DeviceClock> make_clock() { return std::make_unique<HostClock>(); }
  // The timers the model's regions report to (train --timers), or none. Not owned.
  void set_timers(StepTimers* timers) { timers_ = timers; }
  StepTimers* timers() const { return timers_; }

  Tensor empty(const Shape& shape, DType dtype = DType::f32) {
    return Tensor::empty(shape, dtype, arena(), device());
  }
  Tensor zeros(const Shape& shape, DType dtype = DType::f32) {
    Tensor t = empty(shape, dtype);
    fill(t, 0.0f);
    return t;
  }

  // The dtype models keep activations and weights in: f32 on the CPU (the reference), bf16 on
  // the GPU. Saved statistics (RMSNorm rstd, attention and cross-entropy lse), gradients,
  // optimizer state and masters stay f32 everywhere.
  virtual DType activation_dtype() const { return DType::f32; }
  Tensor activation(const Shape& shape) { return empty(shape, activation_dtype()); }

  // Host <-> device, for the few places that read or write tensor data on the host (token ids,
  // positions, initialisation, checkpoints). On the CPU both are the identity when the dtype
  // matches (no copy, so CPU results are unchanged); the GPU backend copies and converts
  // between f32 and bf16.
  // Host memory to fill before from_host: the backend's own arena on the CPU (so the CPU
  // accounting is what it always was), a host arena of the backend's on the GPU.
  virtual Tensor host_empty(const Shape& shape, DType dtype) { return empty(shape, dtype); }
  virtual Tensor to_host(const Tensor& x, DType dtype) {
    require(x.dtype() == dtype, "the CPU backend does not convert ", dtype_name(x.dtype()), " to ",
            dtype_name(dtype));
    return x;
  }
  virtual Tensor from_host(const Tensor& host, DType dtype) {
    require(host.dtype() == dtype, "the CPU backend does not convert ", dtype_name(host.dtype()),
            " to ", dtype_name(dtype));
    return host;
  }

  // --- elementwise and reductions -------------------------------------------------------
  virtual void fill(Tensor& x, float value) = 0;
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  // y += alpha * x
  virtual void axpy(float alpha, const Tensor& x, Tensor& y) = 0;
  virtual void scale(Tensor& x, float alpha) = 0;
  // sum of x*x in double, for global gradient norms
  virtual double sum_squares(const Tensor& x) = 0;
  // sums[index] = sum_squares(x) (same bits), with no host wait: `sums` is an i64 tensor of the
  // backend's holding doubles, read once after many calls (a wait per tensor left the GPU idle
  // between the gradient norm's hundreds of small reductions).
  virtual void sum_squares_into(const Tensor& x, Tensor& sums, std::int64_t index);
  // true when every element is finite
  virtual bool all_finite(const Tensor& x) = 0;
  // x [rows, cols] += bias [cols]
  virtual void add_bias(Tensor& x, const Tensor& bias) = 0;
  // dbias [cols] += column sums of dy [rows, cols]  (accumulates)
  virtual void bias_backward(const Tensor& dy, Tensor& dbias) = 0;

  // --- GEMM -------------------------------------------------------------------------------
  // c = alpha * op(a) @ op(b) + beta * c with op(x) = x or x^T; a, b, c are 2-D.
  virtual void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                      float alpha = 1.0f, float beta = 0.0f) = 0;

  // --- embedding --------------------------------------------------------------------------
  // out [tokens, hidden] = table[ids]; ids i32 [tokens]
  virtual void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) = 0;
  // dtable[ids[i]] += dout[i]  (accumulates)
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) = 0;

  // --- RMSNorm over the last dim of x [rows, n] ------------------------------------------
  // y = x * rstd * w, rstd [rows] = 1/sqrt(mean(x^2) + eps) is saved for backward
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                               Tensor& rstd) = 0;
  // dx overwritten; dw accumulates
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                const Tensor& rstd, Tensor& dx, Tensor& dw) = 0;
  // The pre-norm block's residual add fused with the norm that follows it: r += x, then
  // rmsnorm_forward(r). The values are those of axpy then rmsnorm_forward (r rounded to its
  // dtype before the norm reads it); a backend may do both in one pass.
  virtual void add_rmsnorm_forward(const Tensor& x, Tensor& r, const Tensor& w, float eps,
                                   Tensor& y, Tensor& rstd) {
    axpy(1.0f, x, r);
    rmsnorm_forward(r, w, eps, y, rstd);
  }
  // rmsnorm_backward, then dx += residual_grad (the gradient reaching the norm's input through
  // the residual branch), with the values of those two ops.
  virtual void rmsnorm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w,
                                    const Tensor& rstd, const Tensor& residual_grad, Tensor& dx,
                                    Tensor& dw) {
    rmsnorm_backward(dy, x, w, rstd, dx, dw);
    axpy(1.0f, residual_grad, dx);
  }

  // --- rotary position embedding, in place, HF "rotate_half" convention -------------------
  // x [batch, seq, heads, head_dim]; positions i32 [seq]; inverse=true applies the transpose
  // rotation, which is the backward pass.
  virtual void rope(Tensor& x, const Tensor& positions, float theta, bool inverse) = 0;
  // rope of an attention layer's q and k ([batch, seq, heads, head_dim] each, the same batch, seq,
  // head_dim and dtype; the head counts may differ): the values of two rope calls, which a backend
  // may do in one pass sharing the position angles.
  virtual void rope_qk(Tensor& q, Tensor& k, const Tensor& positions, float theta, bool inverse) {
    rope(q, positions, theta, inverse);
    rope(k, positions, theta, inverse);
  }

  // --- attention (GQA: q heads a multiple of kv heads) -----------------------------------
  // q [b, sq, h, d], k/v [b, sk, hk, d], out [b, sq, h, d], lse [b, h, sq] saved for backward.
  // Query i sits at position q_offset + i of the key sequence (KV-cached decoding).
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const AttentionMask& mask, float scale, Tensor& out, Tensor& lse,
                                 std::int64_t q_offset = 0) = 0;
  // dq, dk, dv overwritten
  virtual void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  const AttentionMask& mask, float scale, Tensor& dq, Tensor& dk,
                                  Tensor& dv, std::int64_t q_offset = 0) = 0;

  // --- SwiGLU: out = silu(gate) * up ------------------------------------------------------
  virtual void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // dgate, dup overwritten
  virtual void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                               Tensor& dgate, Tensor& dup) = 0;

  // --- softmax cross-entropy over logits [tokens, vocab] ----------------------------------
  // targets i32 [tokens]; rows whose target == ignore_index contribute nothing.
  // Writes lse [tokens] and returns the *sum* of the per-token losses.
  virtual double cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                       std::int32_t ignore_index, Tensor& lse) = 0;
  // dlogits = grad_scale * (softmax(logits) - onehot(target)), zero on ignored rows.
  // dlogits may be the same tensor as logits (in place).
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                      const Tensor& lse, std::int32_t ignore_index,
                                      float grad_scale, Tensor& dlogits) = 0;

  // --- vocabulary-parallel variants (tensor parallelism) ----------------------------------
  // This rank holds vocabulary rows [vocab_offset, vocab_offset + table rows). Ids outside that
  // range give zero rows forward and no gradient backward; the caller all-reduces the output.
  virtual void embedding_forward_sharded(const Tensor& table, const Tensor& ids,
                                         std::int64_t vocab_offset, Tensor& out) = 0;
  virtual void embedding_backward_sharded(const Tensor& ids, const Tensor& dout,
                                          std::int64_t vocab_offset, Tensor& dtable) = 0;
  // out [rows] = max over the last dim of x [rows, cols]
  virtual void row_max(const Tensor& x, Tensor& out) = 0;
  // For local logits [tokens, local_vocab] and the *global* row max: sum_exp [tokens] =
  // sum_c exp(logit - max) and target_logit [tokens] = the target's logit where this rank holds
  // the target, else 0. Both are all-reduced (sum) over the vocabulary shards by the caller.
  virtual void cross_entropy_stats(const Tensor& logits, const Tensor& targets,
                                   std::int64_t vocab_offset, const Tensor& max, Tensor& sum_exp,
                                   Tensor& target_logit) = 0;
  // lse = max + log(sum_exp); returns the sum over non-ignored rows of lse - target_logit.
  virtual double cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                      const Tensor& target_logit, const Tensor& targets,
                                      std::int32_t ignore_index, Tensor& lse) = 0;
  // cross_entropy_backward for a vocabulary shard; dlogits may be logits.
  virtual void cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                              const Tensor& lse, std::int32_t ignore_index,
                                              std::int64_t vocab_offset, float grad_scale,
                                              Tensor& dlogits) = 0;

  // Per-row weighted variant (objectives whose tokens carry different weights, e.g. the 1/t
  // of block diffusion): weights f32 [tokens]; returns sum over counted rows of
  // weights[r] * loss_r, and dlogits = grad_scale * weights[r] * (softmax - onehot(target)).
  // Not pure, so backends that predate it still build; they throw until they implement it.
  virtual double weighted_cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                                const Tensor& weights, std::int32_t ignore_index,
                                                Tensor& lse);
  virtual void weighted_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                               const Tensor& lse, const Tensor& weights,
                                               std::int32_t ignore_index, float grad_scale,
                                               Tensor& dlogits);
  // The same over a vocabulary shard (tensor parallelism): cross_entropy_finish and
  // cross_entropy_backward_sharded with each row's loss and gradient scaled by weights[r].
  virtual double weighted_cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                               const Tensor& target_logit, const Tensor& targets,
                                               const Tensor& weights, std::int32_t ignore_index,
                                               Tensor& lse);
  virtual void weighted_cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                                       const Tensor& lse, const Tensor& weights,
                                                       std::int32_t ignore_index,
                                                       std::int64_t vocab_offset, float grad_scale,
                                                       Tensor& dlogits);

  // --- row gather/scatter (Mixture-of-Experts token permutation) --------------------------
  // Not pure, so backends that predate them still build; they throw until they implement them.
  // dst [m, h]: dst[i] = w[i] * src[index[i]] (w = 1 when weights is undefined); index i32 [m].
  virtual void gather_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                           Tensor& dst);
  // dst[index[i]] += w[i] * src[i]  (accumulates; w = 1 when weights is undefined)
  virtual void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                                Tensor& dst);
  // out [m] = row-wise dot products of a [m, h] and b [m, h]
  virtual void row_dot(const Tensor& a, const Tensor& b, Tensor& out);

  // --- grouped GEMM (the experts of a Mixture-of-Experts layer) ----------------------------
  // The rows of x [rows, *] form consecutive groups of counts[g] rows (sum(counts) = rows);
  // group g multiplies by weights[g]: y_g = alpha * x_g @ op(W_g) + beta * y_g, op(W) = W^T when
  // trans_w (W [out, in], the forward) else W (the input gradient). Empty groups are skipped.
  // The default is one matmul per group, in group order; a backend may replace it with a
  // grouped kernel.
  virtual void grouped_matmul(const Tensor& x, const std::vector<const Tensor*>& weights,
                              const std::vector<std::int64_t>& counts, bool trans_w, Tensor& y,
                              float alpha = 1.0f, float beta = 0.0f);
  // Its weight gradients: dW_g += dy_g^T @ x_g for every non-empty group (accumulates).
  virtual void grouped_matmul_weight_grad(const Tensor& dy, const Tensor& x,
                                          const std::vector<std::int64_t>& counts,
                                          const std::vector<Tensor*>& dweights);

  // --- Mixture-of-Experts routing (docs/ops.md) --------------------------------------------
  // Not pure, so backends that predate them still build; they throw until they implement them.
  // logits f32 [tokens, E]; bias f32 [E] (sigmoid scoring; undefined for none) shifts the
  // choice, not the gates. Returns the routing tensors and its summary on the host (a small
  // copy back: the caller sizes the permutation and the expert exchange from the counts).
  virtual RouterOutput router_forward(const Tensor& logits, const Tensor& bias,
                                      const RouterSpec& spec);
  // dlogits f32 [tokens, E] (overwritten) of sum(dgate * gate) + loss_scale * (aux + z), where
  // the gate gradient of slot s is dgate_rows[slot_row[s]] (0 for a dropped slot, -1).
  virtual void router_backward(const Tensor& logits, const RouterOutput& routing,
                               const RouterSpec& spec, const Tensor& dgate_rows,
                               const Tensor& slot_row, float loss_scale, Tensor& dlogits);
  // The token permutation: expert i32 [tokens, k] and gate f32 [tokens, k] from router_forward;
  // expert e keeps its first kept[e] slots in slot order (token * k + j), the rest are dropped
  // (capacity). Rows are sorted by expert, each expert's rows in slot order, so expert e owns
  // rows [sum_{e'<e} kept[e'], + kept[e]). Writes token_index i32 [rows] (the token of each row),
  // row_gate f32 [rows] (its gate) and slot_row i32 [tokens * k] (each slot's row, -1 dropped).
  virtual void moe_permute(const Tensor& expert, const Tensor& gate,
                           const std::vector<std::int64_t>& kept, Tensor& token_index,
                           Tensor& row_gate, Tensor& slot_row);
  // The un-permutation: y [tokens, h] += sum over token t's rows r (the slots of slot_row
  // [tokens * k], k = slot_row.numel() / tokens, in ascending row order) of w[r] * rows[r]
  // (w = 1 when weights is undefined). token_index [rows] is slot_row's inverse (moe_permute's).
  // Every output row sums its own contributions in that fixed order: deterministic, no atomics.
  // With first_row > 0 (or fewer rows than token_index has), `rows` holds rows [first_row,
  // first_row + rows.dim(0)) of the permutation alone (this rank's experts' segment) and the
  // other rows contribute nothing, as if they were zero; rows and weights stay indexed by the
  // whole permutation's row numbers. With accumulate false, y = the sum (its old values are
  // neither read nor kept: no zero fill first).
  virtual void moe_combine(const Tensor& rows, const Tensor& token_index, const Tensor& weights,
                           const Tensor& slot_row, Tensor& y, std::int64_t first_row = 0,
                           bool accumulate = true);
  // y = 1 / (1 + exp(-x)) and its backward dx = dy * y * (1 - y), f32 (gate scalars).
  virtual void sigmoid_forward(const Tensor& x, Tensor& y);
  virtual void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx);

  // --- optimizer --------------------------------------------------------------------------
  // AdamW on fp32 master weights with moments m, v (torch.optim.AdamW semantics).
  virtual void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                          const AdamWHyper& hyper) = 0;
  // adamw_step on the fp32 `master`, then `value` = master rounded to value's dtype (the bf16
  // weights beside an fp32 master): the bits of adamw_step followed by copy.
  virtual void adamw_step_rounded(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v,
                                  const AdamWHyper& hyper, Tensor& value) {
    adamw_step(master, grad, m, v, hyper);
    copy(master, value);
  }

 private:
  StepTimers* timers_ = nullptr;
};

inline double Backend::weighted_cross_entropy_forward(const Tensor&, const Tensor&, const Tensor&,
                                                      std::int32_t, Tensor&) {
  throw std::logic_error("this backend does not implement weighted_cross_entropy_forward");
}

inline void Backend::weighted_cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&,
                                                     const Tensor&, std::int32_t, float, Tensor&) {
  throw std::logic_error("this backend does not implement weighted_cross_entropy_backward");
}

inline double Backend::weighted_cross_entropy_finish(const Tensor&, const Tensor&, const Tensor&,
                                                     const Tensor&, const Tensor&, std::int32_t,
                                                     Tensor&) {
  throw std::logic_error("this backend does not implement weighted_cross_entropy_finish");
}

inline void Backend::weighted_cross_entropy_backward_sharded(const Tensor&, const Tensor&,
                                                             const Tensor&, const Tensor&,
                                                             std::int32_t, std::int64_t, float,
                                                             Tensor&) {
  throw std::logic_error("this backend does not implement weighted_cross_entropy_backward_sharded");
}

inline void Backend::gather_rows(const Tensor&, const Tensor&, const Tensor&, Tensor&) {
  throw std::logic_error("this backend does not implement gather_rows");
}

inline void Backend::scatter_add_rows(const Tensor&, const Tensor&, const Tensor&, Tensor&) {
  throw std::logic_error("this backend does not implement scatter_add_rows");
}

inline void Backend::row_dot(const Tensor&, const Tensor&, Tensor&) {
  throw std::logic_error("this backend does not implement row_dot");
}

inline void Backend::grouped_matmul(const Tensor& x, const std::vector<const Tensor*>& weights,
                                    const std::vector<std::int64_t>& counts, bool trans_w,
                                    Tensor& y, float alpha, float beta) {
  MM_ASSERT(weights.size() == counts.size(), "grouped_matmul: ", weights.size(), " weights for ",
            counts.size(), " groups");
  MM_ASSERT(x.rank() == 2 && y.rank() == 2,
            "grouped_matmul wants 2-D rows: ", shape_string(x.shape()), " -> ",
            shape_string(y.shape()));
  for (const RowGroup& g : non_empty_row_groups(counts, x.dim(0), y.dim(0), "grouped_matmul")) {
    Tensor yg = y.slice(g.first, g.first + g.count);
    matmul(x.slice(g.first, g.first + g.count), false, *weights[g.index], trans_w, yg, alpha, beta);
  }
}

inline void Backend::grouped_matmul_weight_grad(const Tensor& dy, const Tensor& x,
                                                const std::vector<std::int64_t>& counts,
                                                const std::vector<Tensor*>& dweights) {
  MM_ASSERT(dweights.size() == counts.size(), "grouped_matmul_weight_grad: ", dweights.size(),
            " gradients for ", counts.size(), " groups");
  for (const RowGroup& g :
       non_empty_row_groups(counts, x.dim(0), dy.dim(0), "grouped_matmul_weight_grad"))
    matmul(dy.slice(g.first, g.first + g.count), true, x.slice(g.first, g.first + g.count), false,
           *dweights[g.index], 1.0f, 1.0f);
}

// Slot `index` of sum_squares_into's i64 tensor of doubles, checked.
inline double* sum_slot(Tensor& sums, std::int64_t index) {
  MM_ASSERT(sums.dtype() == DType::i64 && index >= 0 && index < sums.numel(),
            "sum_squares_into slot ", index, " of ", shape_string(sums.shape()));
  return static_cast<double*>(sums.raw()) + index;
}

// The host backends' form: their tensors are host memory.
inline void Backend::sum_squares_into(const Tensor& x, Tensor& sums, std::int64_t index) {
  *sum_slot(sums, index) = sum_squares(x);
}

inline RouterOutput Backend::router_forward(const Tensor&, const Tensor&, const RouterSpec&) {
  throw std::logic_error("this backend does not implement router_forward");
}

inline void Backend::router_backward(const Tensor&, const RouterOutput&, const RouterSpec&,
                                     const Tensor&, const Tensor&, float, Tensor&) {
  throw std::logic_error("this backend does not implement router_backward");
}

inline void Backend::moe_permute(const Tensor&, const Tensor&, const std::vector<std::int64_t>&,
                                 Tensor&, Tensor&, Tensor&) {
  throw std::logic_error("this backend does not implement moe_permute");
}

inline void Backend::moe_combine(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 Tensor&, std::int64_t, bool) {
  throw std::logic_error("this backend does not implement moe_combine");
}

inline void Backend::sigmoid_forward(const Tensor&, Tensor&) {
  throw std::logic_error("this backend does not implement sigmoid_forward");
}

inline void Backend::sigmoid_backward(const Tensor&, const Tensor&, Tensor&) {
  throw std::logic_error("this backend does not implement sigmoid_backward");
}

}  // namespace metamorph

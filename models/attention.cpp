#include "models/attention.hpp"

#include <cmath>

#include "runtime/core/error.hpp"

namespace metamorph {

Attention::Attention(Backend& backend, const ModelConfig& config, AttentionWeights weights)
    : backend_(backend), config_(config), w_(weights) {}

Tensor Attention::project(const Tensor& x, const Parameter* weight, const Parameter* bias) {
  Tensor y = backend_.activation({x.dim(0), weight->value.dim(0)});
  backend_.matmul(x, false, weight->value, true, y);
  if (bias != nullptr) backend_.add_bias(y, bias->value);
  return y;
}

Tensor Attention::forward(const Tensor& x, std::int64_t batch, const Tensor& positions,
                          const AttentionMask& mask) {
  const std::int64_t tokens = x.dim(0), seq = tokens / batch, d = config_.head_dim;
  const std::int64_t heads = w_.q_proj->value.dim(0) / d, kv_heads = w_.k_proj->value.dim(0) / d;
  Saved s;
  s.x = x;
  s.batch = batch;
  s.positions = positions;
  s.mask = mask;
  Tensor q = project(x, w_.q_proj, w_.q_bias);
  Tensor k = project(x, w_.k_proj, w_.k_bias);
  s.v = project(x, w_.v_proj, w_.v_bias).view({batch, seq, kv_heads, d});
  if (config_.qk_norm) {
    s.q_raw = q;
    s.k_raw = k;
    s.q_rstd = backend_.empty({tokens * heads});
    s.k_rstd = backend_.empty({tokens * kv_heads});
    Tensor qn = backend_.activation(q.shape()), kn = backend_.activation(k.shape());
    Tensor qn_rows = qn.view({tokens * heads, d}), kn_rows = kn.view({tokens * kv_heads, d});
    backend_.rmsnorm_forward(q.view({tokens * heads, d}), w_.q_norm->value,
                             static_cast<float>(config_.rms_norm_eps), qn_rows, s.q_rstd);
    backend_.rmsnorm_forward(k.view({tokens * kv_heads, d}), w_.k_norm->value,
                             static_cast<float>(config_.rms_norm_eps), kn_rows, s.k_rstd);
    q = qn;
    k = kn;
  }
  s.q = q.view({batch, seq, heads, d});
  s.k = k.view({batch, seq, kv_heads, d});
  const auto theta = static_cast<float>(config_.rope_theta);
  backend_.rope_qk(s.q, s.k, positions, theta, false);
  s.out = backend_.activation({batch, seq, heads, d});
  s.lse = backend_.empty({batch, heads, seq});
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  backend_.attention_forward(s.q, s.k, s.v, mask, scale, s.out, s.lse);
  Tensor y = backend_.activation({tokens, config_.hidden_size});
  backend_.matmul(s.out.view({tokens, heads * d}), false, w_.o_proj->value, true, y);
  saved_.push_back(std::move(s));
  return y;
}

Tensor Attention::head_norm(const Tensor& x, const Parameter* weight) {
  const std::int64_t d = config_.head_dim, rows = x.numel() / d;
  Tensor y = backend_.activation(x.shape()), rstd = backend_.empty({rows});
  Tensor y_rows = y.view({rows, d});
  backend_.rmsnorm_forward(x.view({rows, d}), weight->value,
                           static_cast<float>(config_.rms_norm_eps), y_rows, rstd);
  return y;
}

Tensor Attention::forward_cached(const Tensor& x, const Tensor& positions,
                                 const AttentionMask& mask, Tensor& cache_k, Tensor& cache_v,
                                 std::int64_t cached) {
  const std::int64_t s = x.dim(0), d = config_.head_dim;
  const std::int64_t heads = w_.q_proj->value.dim(0) / d, kv_heads = w_.k_proj->value.dim(0) / d;
  MM_ASSERT(cached >= 0 && cached + s <= cache_k.dim(0) && cache_v.shape() == cache_k.shape(),
            "KV cache of ", shape_string(cache_k.shape()), " cannot take ", s, " tokens after ",
            cached);
  Tensor q = project(x, w_.q_proj, w_.q_bias);
  Tensor k = project(x, w_.k_proj, w_.k_bias);
  const Tensor v = project(x, w_.v_proj, w_.v_bias);
  if (config_.qk_norm) {
    q = head_norm(q, w_.q_norm);
    k = head_norm(k, w_.k_norm);
  }
  Tensor q4 = q.view({1, s, heads, d}), k4 = k.view({1, s, kv_heads, d});
  const auto theta = static_cast<float>(config_.rope_theta);
  backend_.rope_qk(q4, k4, positions, theta, false);
  Tensor k_rows = cache_k.slice(cached, cached + s), v_rows = cache_v.slice(cached, cached + s);
  backend_.copy(k, k_rows);
  backend_.copy(v, v_rows);
  const std::int64_t keys = cached + s;
  const Tensor all_k = cache_k.slice(0, keys).view({1, keys, kv_heads, d});
  const Tensor all_v = cache_v.slice(0, keys).view({1, keys, kv_heads, d});
  Tensor out = backend_.activation({1, s, heads, d}), lse = backend_.empty({1, heads, s});
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  backend_.attention_forward(q4, all_k, all_v, mask, scale, out, lse, cached);
  Tensor y = backend_.activation({s, config_.hidden_size});
  backend_.matmul(out.view({s, heads * d}), false, w_.o_proj->value, true, y);
  return y;
}

void Attention::project_weight_grad(const Tensor& dproj, const Tensor& x, Parameter* weight,
                                    Parameter* bias) {
  backend_.matmul(dproj, true, x, false, weight->grad, 1.0f, 1.0f);
  if (bias != nullptr) backend_.bias_backward(dproj, bias->grad);
}

Tensor Attention::backward(const Tensor& dy, DeferredWeightGrads* later) {
  MM_ASSERT(!saved_.empty(), "Attention::backward without forward");
  Saved& s = saved_.front();
  const std::int64_t tokens = dy.dim(0), d = config_.head_dim;
  const std::int64_t heads = s.q.dim(2), kv_heads = s.k.dim(2);
  const Tensor out_rows = s.out.view({tokens, heads * d});
  // Every weight gradient waits until dx is formed, so that dx's all-reduce can start first;
  // each reads tensors that stay unchanged until it has run.
  run_or_defer(later,
               [this, dy, out_rows] { project_weight_grad(dy, out_rows, w_.o_proj, nullptr); });
  Tensor dout = backend_.activation(s.out.shape());
  Tensor dout_rows = dout.view({tokens, heads * d});
  backend_.matmul(dy, false, w_.o_proj->value, false, dout_rows);
  Tensor dq = backend_.activation(s.q.shape()), dk = backend_.activation(s.k.shape());
  Tensor dv = backend_.activation(s.v.shape());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  backend_.attention_backward(dout, s.q, s.k, s.v, s.out, s.lse, s.mask, scale, dq, dk, dv);
  dout = Tensor();
  const auto theta = static_cast<float>(config_.rope_theta);
  backend_.rope_qk(dq, dk, s.positions, theta, true);
  Tensor dq_rows = dq.view({tokens, heads * d}), dk_rows = dk.view({tokens, kv_heads * d});
  if (config_.qk_norm) {
    Tensor dq_raw = backend_.activation(dq_rows.shape()),
           dk_raw = backend_.activation(dk_rows.shape());
    Tensor dq_raw_rows = dq_raw.view({tokens * heads, d});
    Tensor dk_raw_rows = dk_raw.view({tokens * kv_heads, d});
    backend_.rmsnorm_backward(dq.view({tokens * heads, d}), s.q_raw.view({tokens * heads, d}),
                              w_.q_norm->value, s.q_rstd, dq_raw_rows, w_.q_norm->grad);
    backend_.rmsnorm_backward(dk.view({tokens * kv_heads, d}), s.k_raw.view({tokens * kv_heads, d}),
                              w_.k_norm->value, s.k_rstd, dk_raw_rows, w_.k_norm->grad);
    dq_rows = dq_raw;
    dk_rows = dk_raw;
  }
  const Tensor dv_rows = dv.view({tokens, kv_heads * d});
  Tensor dx = backend_.activation(s.x.shape());
  backend_.matmul(dq_rows, false, w_.q_proj->value, false, dx);
  backend_.matmul(dk_rows, false, w_.k_proj->value, false, dx, 1.0f, 1.0f);
  backend_.matmul(dv_rows, false, w_.v_proj->value, false, dx, 1.0f, 1.0f);
  run_or_defer(later, [this, dq_rows, dk_rows, dv_rows, x = s.x] {
    project_weight_grad(dq_rows, x, w_.q_proj, w_.q_bias);
    project_weight_grad(dk_rows, x, w_.k_proj, w_.k_bias);
    project_weight_grad(dv_rows, x, w_.v_proj, w_.v_bias);
  });
  saved_.pop_front();
  return dx;
}

}  // namespace metamorph

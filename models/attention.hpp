#pragma once
// Grouped-query self-attention with RoPE (Llama), optional QKV bias (Qwen2) and QK-norm (Qwen3).
// Explicit forward and backward: forward keeps what backward needs, backward consumes it.
#include <deque>

#include "models/deferred_weight_grads.hpp"
#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

struct AttentionWeights {
  Parameter* q_proj = nullptr;
  Parameter* k_proj = nullptr;
  Parameter* v_proj = nullptr;
  Parameter* o_proj = nullptr;
  Parameter* q_bias = nullptr;  // attention_bias only
  Parameter* k_bias = nullptr;
  Parameter* v_bias = nullptr;
  Parameter* q_norm = nullptr;  // qk_norm only
  Parameter* k_norm = nullptr;
};

class Attention {
 public:
  Attention(Backend& backend, const ModelConfig& config, AttentionWeights weights);

  // x [batch*seq, hidden] -> [batch*seq, hidden]; positions i32 [seq].
  Tensor forward(const Tensor& x, std::int64_t batch, const Tensor& positions,
                 const AttentionMask& mask);
  // KV-cached inference for one sequence: x [s, hidden] are the tokens at key positions
  // [cached, cached + s) (positions i32 [s] are their RoPE positions). Their keys/values are
  // written into rows [cached, cached + s) of cache_k/cache_v [capacity, kv_heads, head_dim],
  // and they attend to keys [0, cached + s) under `mask` (queries at cached + i). Keeps nothing.
  Tensor forward_cached(const Tensor& x, const Tensor& positions, const AttentionMask& mask,
                        Tensor& cache_k, Tensor& cache_v, std::int64_t cached);
  // Returns dx for the oldest forward still pending (forwards and backwards pair up in FIFO
  // order, as a pipeline schedule runs them); accumulates into the weights' grads; releases that
  // forward's saved activations. With `later`, the projections' weight-gradient GEMMs are left
  // there for the caller to run (behind the start of dx's TP all-reduce) instead of run here.
  Tensor backward(const Tensor& dy, DeferredWeightGrads* later = nullptr);
  // Drops every pending forward's activations.
  void release() { saved_.clear(); }

 private:
  struct Saved {
    Tensor x;               // layer input [T, hidden]
    Tensor q_raw, k_raw;    // before QK-norm (qk_norm only)
    Tensor q_rstd, k_rstd;  // QK-norm statistics
    Tensor q, k, v;         // [b, s, heads, head_dim], q and k after RoPE
    Tensor out, lse;        // attention output and its log-sum-exp
    Tensor positions;
    AttentionMask mask;
    std::int64_t batch = 0;
  };

  Tensor project(const Tensor& x, const Parameter* weight, const Parameter* bias);
  // QK-norm of x [tokens, heads * head_dim] over head_dim, into a new tensor.
  Tensor head_norm(const Tensor& x, const Parameter* weight);
  // The weight (and bias) gradient of y = x W^T (+ b) from dproj = dL/dy.
  void project_weight_grad(const Tensor& dproj, const Tensor& x, Parameter* weight,
                           Parameter* bias);

  Backend& backend_;
  ModelConfig config_;
  AttentionWeights w_;
  std::deque<Saved> saved_;
};

}  // namespace metamorph

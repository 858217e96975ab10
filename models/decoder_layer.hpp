#pragma once
// One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(.)).
// With recompute on, forward keeps only the block's input and backward re-runs the forward.
#include <deque>
#include <optional>

#include "models/attention.hpp"
#include "models/mlp.hpp"
#include "models/moe_block.hpp"
#include "models/tensor_parallel.hpp"

namespace metamorph {

struct DecoderLayerWeights {
  Parameter* input_norm = nullptr;
  Parameter* post_attention_norm = nullptr;
  AttentionWeights attention;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers (moe.router set): the block replaces the dense MLP
};

class DecoderLayer {
 public:
  // Under tensor parallelism the weights are this rank's shards; the block sums the partial
  // outputs of attention and MLP (forward) and their partial input gradients (backward). In
  // backward each input gradient's sum is started as soon as it is formed, the sublayer's
  // deferred weight-gradient GEMMs run while it is in flight, and it is waited for just before
  // the RMSNorm backward reads it.
  DecoderLayer(Backend& backend, const ModelConfig& config, DecoderLayerWeights weights,
               bool recompute, TensorParallel tp = {}, ExpertExchange* experts = nullptr);

  // record_stats: count this forward in the MoE block's statistics (training forwards).
  Tensor forward(const Tensor& x, std::int64_t batch, const Tensor& positions,
                 const AttentionMask& mask, bool record_stats = true);
  // KV-cached inference for one sequence (see Attention::forward_cached); keeps nothing.
  Tensor forward_cached(const Tensor& x, const Tensor& positions, const AttentionMask& mask,
                        Tensor& cache_k, Tensor& cache_v, std::int64_t cached);
  // Returns dx of the oldest pending forward (several may be pending under a pipeline
  // schedule; they are consumed in FIFO order); accumulates weight grads; releases what that
  // forward kept.
  // moe_loss_scale weighs the MoE block's aux and z losses in the loss being differentiated.
  Tensor backward(const Tensor& dy, float moe_loss_scale = 1.0f);
  void release();
  // The MoE block of an MoE layer, else nullptr.
  MoeBlock* moe() { return moe_ ? &*moe_ : nullptr; }

 private:
  // What one forward keeps for its backward.
  struct Pending {
    Tensor x, mid, rstd1, rstd2, positions;
    AttentionMask mask;
    std::int64_t batch = 0;
  };
  Tensor run_forward(Pending& p, bool record_stats);
  Tensor ffn_forward(const Tensor& x, bool record_stats);
  // Sums a sublayer's partial input gradient over the TP group while `weight_grads` run.
  void sum_behind_weight_grads(Tensor& dx, DeferredWeightGrads& weight_grads);

  Backend& backend_;
  float eps_;
  DecoderLayerWeights w_;
  bool recompute_;
  TensorParallel tp_;
  Attention attention_;
  std::optional<SwiGluMlp> mlp_;  // dense layers
  std::optional<MoeBlock> moe_;   // MoE layers
  std::deque<Pending> pending_;
};

}  // namespace metamorph

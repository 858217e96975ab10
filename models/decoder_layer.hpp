#pragma once
// One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(.)).
// With recompute on, forward keeps only the block's input and backward re-runs the forward.
#include <deque>
#include <functional>
#include <memory>
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

  // The same forward and backward in phases, for two passes interleaved layer by layer
  // (Transformer::forward_backward_interleaved). Each phase but the last ends by starting a TP
  // sum that the same pass's next phase waits for, so the other pass's phase runs while it is in
  // flight. `slot` is the pass's place among the pending forwards (0: the oldest). The values
  // are those of forward() and backward(): only the order of independent work changes.
  void forward_attention(const Tensor& x, std::int64_t batch, const Tensor& positions,
                         const AttentionMask& mask);
  void forward_ffn(std::size_t slot);
  Tensor forward_finish(std::size_t slot);
  void backward_ffn(std::size_t slot, const Tensor& dy, float moe_loss_scale);
  void backward_attention(std::size_t slot);
  // Finishes the oldest pending pass's backward (its two phases must have run) and returns dx.
  Tensor backward_finish();
  void release();
  // The MoE block of an MoE layer, else nullptr.
  MoeBlock* moe() { return moe_ ? &*moe_ : nullptr; }

 private:
  // What one forward keeps for its backward.
  struct Pending {
    Tensor x, mid, rstd1, rstd2, positions;
    AttentionMask mask;
    std::int64_t batch = 0;
    bool record_stats = true;
    // Between phases: the tensor whose TP sum is in flight (the sublayer output forward, its
    // partial input gradient backward), the sum, and the backward's residual gradient.
    Tensor partial, residual_grad;
    // Shared, not optional: Pending stays copyable, as the layers' vector needs.
    std::shared_ptr<PendingSum> sum;
  };
  Tensor run_forward(Pending& p, bool record_stats);
  // A forward's inputs, before any phase has run.
  static Pending pending_for(const Tensor& x, std::int64_t batch, const Tensor& positions,
                             const AttentionMask& mask);
  Pending& pending_at(std::size_t slot);
  // The phases on one pass; `overlap` false sums at once (blocking) instead of starting the sum.
  void attention_phase(Pending& p, bool overlap);
  void ffn_phase(Pending& p, bool overlap);
  Tensor finish_forward_phase(Pending& p);
  void ffn_backward_phase(Pending& p, const Tensor& dy, float moe_loss_scale);
  // p.partial = a sublayer's backward (its partial input gradient), given where to leave its
  // weight-gradient GEMMs; then starts p.partial's sum and runs those GEMMs while it is in flight.
  void sublayer_backward(Pending& p, const std::function<Tensor(DeferredWeightGrads*)>& backward);
  void attention_backward_phase(Pending& p);
  Tensor finish_backward_phase(Pending& p);
  // Starts the sum of p.partial over the TP group (or sums at once when !overlap).
  void start_partial_sum(Pending& p, bool overlap);
  void wait_partial_sum(Pending& p);
  Tensor ffn_forward(const Tensor& x, bool record_stats);
  // Releases what a recomputing layer does not keep between forward and backward.
  void drop_for_recompute(Pending& p);

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

#pragma once
// A Llama/Qwen-style decoder-only LM over a ParameterSet it does not own: embedding, decoder
// layers, final RMSNorm, LM head (tied or untied) and softmax cross-entropy. Under pipeline
// parallelism an instance runs one stage; its stage_* calls are what a pipeline schedule drives.
#include <array>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "models/decoder_layer.hpp"
#include "models/expert_exchange.hpp"
#include "models/kv_cache.hpp"
#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "models/pipeline_stage.hpp"
#include "models/tensor_parallel.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

struct TransformerOptions {
  bool recompute = false;          // full activation recompute per layer
  std::int32_t ignore_index = -1;  // targets with this id carry no loss
  AttentionMask mask{};            // causal unless an objective says otherwise
};

struct LossSum {
  double sum = 0.0;         // summed per-token cross-entropy
  std::int64_t tokens = 0;  // targets that were not ignored
};

class Transformer {
 public:
  // Under tensor parallelism `params` holds this rank's shards (make_parameters with the same
  // TensorParallel); embedding and LM head are vocabulary-parallel, so no rank ever holds the
  // full-vocabulary logits. Under pipeline parallelism `params` holds the stage's parameters.
  Transformer(Backend& backend, const ModelConfig& config, ParameterSet& params,
              TransformerOptions options = {}, TensorParallel tp = {}, PipelineStage stage = {},
              ExpertExchange* experts = nullptr);
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  TransformerOptions& options() { return options_; }
  const PipelineStage& stage() const { return stage_; }
  // The MoE blocks of this stage with their global layer index (empty for a dense model).
  // MoE layers reach their experts through the ExpertExchange given to the constructor (all
  // experts local when none was given).
  std::vector<std::pair<std::int64_t, MoeBlock*>> moe_blocks();

  // --- whole model (single stage) ---------------------------------------------------------
  // tokens i32 [batch, seq] -> logits f32 [batch*seq, vocab] (this rank's vocabulary slice under
  // tensor parallelism). Keeps no activations.
  Tensor logits(const Tensor& tokens);
  // Forward and backward on one micro-batch. Gradients of (grad_scale * summed loss) are
  // accumulated into the parameters' grads. targets i32 [batch, seq].
  LossSum forward_backward(const Tensor& tokens, const Tensor& targets, float grad_scale);
  // Loss only (validation).
  LossSum loss(const Tensor& tokens, const Tensor& targets);

  // The same with explicit RoPE positions i32 [seq] (shared by every batch row) and attention
  // mask, for objectives whose sequence is not one causal window (block diffusion's
  // [x_t ; x_0] repeats positions 0..n-1). weights f32 [batch, seq], when defined, scales each
  // token's loss (LossSum::sum is then the weighted sum; tokens still counts non-ignored rows).
  Tensor logits(const Tensor& tokens, const Tensor& positions, const AttentionMask& mask);
  LossSum forward_backward(const Tensor& tokens, const Tensor& positions, const Tensor& targets,
                           const AttentionMask& mask, float grad_scale,
                           const Tensor& weights = Tensor());
  LossSum loss(const Tensor& tokens, const Tensor& positions, const Tensor& targets,
               const AttentionMask& mask, const Tensor& weights = Tensor());

  // One pass of forward_backward_interleaved: forward_backward's arguments (positions
  // undefined: 0..seq-1).
  struct Pass {
    Tensor tokens, positions;
    AttentionMask mask;
    Tensor targets, weights;
  };
  // Forward and backward of two passes through the whole model, interleaved layer by layer so
  // that each pass's tensor-parallel sums run while the other pass computes (the batch split of
  // Domino, Wang et al. 2024, with the two halves as whole micro-batches). Losses and gradients
  // are bit for bit those of forward_backward on the first pass, then on the second; memory
  // holds both passes' activations at once.
  std::array<LossSum, 2> forward_backward_interleaved(const std::array<Pass, 2>& passes,
                                                      float grad_scale);

  // Empty per-layer key/value buffers for one sequence of up to `capacity` tokens (one rank).
  KvCache make_kv_cache(std::int64_t capacity);
  // KV-cached inference on one sequence: tokens i32 [s] sit at key positions
  // [cache.length, cache.length + s) with RoPE positions i32 [s]; they attend to the cache and
  // to each other under `mask` (evaluated in key positions). Returns logits [s, vocab]. The
  // first `commit` tokens' keys/values stay in the cache (cache.length += commit); the rest
  // are scratch, overwritten by the next call. Only rows [first_logit_row, s) get logits
  // ([s - first_logit_row, vocab]): a decoder reads few of them, and in a pass of a few tokens
  // the LM head over the whole vocabulary is a large share of the work.
  Tensor logits_cached(const Tensor& tokens, const Tensor& positions, const AttentionMask& mask,
                       KvCache& cache, std::int64_t commit, std::int64_t first_logit_row = 0);

  // --- one pipeline stage -------------------------------------------------------------------
  // tokens i32 [batch, seq] (every stage gets them: the first embeds them, the others take
  // their shape), input [batch*seq, hidden] from the previous stage (ignored on the first).
  // Returns the activations for the next stage (the final-norm output on the last stage).
  // keep=false keeps nothing for backward (evaluation). Positions 0..seq-1 and the model's
  // mask unless given.
  Tensor stage_forward(const Tensor& tokens, const Tensor& input, bool keep);
  Tensor stage_forward(const Tensor& tokens, const Tensor& positions, const AttentionMask& mask,
                       const Tensor& input, bool keep);
  // Backward of the oldest kept micro-batch: on the last stage from the (weighted, when weights
  // is defined) loss of `targets`, then also returned through `loss`; elsewhere from
  // grad_output. Returns the gradient for the previous stage (undefined on the first stage).
  Tensor stage_backward(const Tensor& targets, const Tensor& grad_output, float grad_scale,
                        LossSum* loss, const Tensor& weights = Tensor());
  // Called during stage_backward as gradients become final: with the layer index after each
  // decoder layer's backward (descending), with num_layers after the final norm and LM head.
  // Data parallelism starts reducing those gradients while the rest of the backward runs.
  void set_gradients_ready_hook(std::function<void(std::int64_t layer)> hook) {
    gradients_ready_ = std::move(hook);
  }
  // Called during stage_forward before a part of the stage uses its weights: with -1 before the
  // embedding, each decoder layer's index before its forward, num_layers before the final norm
  // and LM head. ZeRO-1 finishes gathering those weights there, so the gathers of later layers
  // still run while the earlier layers compute.
  void set_parameters_needed_hook(std::function<void(std::int64_t layer)> hook) {
    parameters_needed_ = std::move(hook);
  }
  // The last stage's loss of a stage_forward(keep=false) output.
  LossSum head_loss(const Tensor& hidden, const Tensor& targets, const Tensor& weights = Tensor());

 private:
  Tensor default_positions(std::int64_t seq);
  // Throws InputError when a position lies outside the model's range.
  void check_positions(const Tensor& positions, std::int64_t seq);
  // The first stage's embedding of ids i32 [n] (summed over the TP group).
  Tensor embed(const Tensor& ids);
  // The first stage's embedding gradient from dx [n, hidden].
  void embedding_backward(const Tensor& ids, const Tensor& dx);
  // Summed (weighted, when weights is defined) cross-entropy of logits against targets; writes
  // lse for the backward.
  LossSum cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                        Tensor& lse);
  Parameter* param(const std::string& name);

  struct Pending {
    Tensor ids, final_in, final_rstd, final_out;
  };
  // The last stage's final norm of x into p.
  void final_norm(Pending& p, const Tensor& x);
  // The last stage's loss and its backward through the LM head and final norm; returns the
  // gradient of the final norm's input.
  Tensor head_backward(const Pending& p, const Tensor& targets, const Tensor& weights,
                       float grad_scale, LossSum* loss);

  Backend& backend_;
  ModelConfig config_;
  ParameterSet& params_;
  TransformerOptions options_;
  TensorParallel tp_;
  PipelineStage stage_;
  std::int64_t vocab_offset_ = 0;                  // first vocabulary row this rank holds
  Parameter* embed_ = nullptr;                     // first stage (and last, when tied)
  Parameter* final_norm_ = nullptr;                // last stage
  Parameter* head_ = nullptr;                      // last stage; == embed_ when tied
  std::unique_ptr<ExpertExchange> local_experts_;  // when MoE and no exchange was given
  std::vector<DecoderLayer> layers_;
  std::deque<Pending> pending_;
  std::function<void(std::int64_t)> gradients_ready_;
  std::function<void(std::int64_t)> parameters_needed_;
};

}  // namespace metamorph

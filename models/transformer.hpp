#pragma once
// A Llama/Qwen-style decoder-only LM over a ParameterSet it does not own: embedding, decoder
// layers, final RMSNorm, LM head (tied or untied) and softmax cross-entropy.
#include <vector>

#include "models/decoder_layer.hpp"
#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "models/tensor_parallel.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

struct TransformerOptions {
  bool recompute = false;           // full activation recompute per layer
  std::int32_t ignore_index = -1;   // targets with this id carry no loss
  AttentionMask mask{};             // causal unless an objective says otherwise
};

struct LossSum {
  double sum = 0.0;          // summed per-token cross-entropy
  std::int64_t tokens = 0;   // targets that were not ignored
};

class Transformer {
 public:
  // Under tensor parallelism `params` holds this rank's shards (make_parameters with the same
  // TensorParallel); embedding and LM head are vocabulary-parallel, so no rank ever holds the
  // full-vocabulary logits.
  Transformer(Backend& backend, const ModelConfig& config, ParameterSet& params,
              TransformerOptions options = {}, TensorParallel tp = {});
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return config_; }
  TransformerOptions& options() { return options_; }

  // tokens i32 [batch, seq] -> logits f32 [batch*seq, vocab] (this rank's vocabulary slice under
  // tensor parallelism). Keeps no activations.
  Tensor logits(const Tensor& tokens);
  // Forward and backward on one micro-batch. Gradients of (grad_scale * summed loss) are
  // accumulated into the parameters' grads. targets i32 [batch, seq].
  LossSum forward_backward(const Tensor& tokens, const Tensor& targets, float grad_scale);
  // Loss only (validation).
  LossSum loss(const Tensor& tokens, const Tensor& targets);

 private:
  Tensor forward_hidden(const Tensor& tokens, bool keep);
  // Summed cross-entropy of logits against targets; writes lse for the backward.
  LossSum cross_entropy(const Tensor& logits, const Tensor& targets, Tensor& lse);
  Parameter* param(const std::string& name);

  Backend& backend_;
  ModelConfig config_;
  ParameterSet& params_;
  TransformerOptions options_;
  TensorParallel tp_;
  std::int64_t vocab_offset_ = 0;  // first vocabulary row this rank holds
  Parameter* embed_ = nullptr;
  Parameter* final_norm_ = nullptr;
  Parameter* head_ = nullptr;  // == embed_ when tied
  std::vector<DecoderLayer> layers_;
  // Saved between forward and backward of the head.
  Tensor ids_, final_in_, final_rstd_, final_out_;
};

}  // namespace metamorph

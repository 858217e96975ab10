#include "models/transformer.hpp"

#include "runtime/core/error.hpp"
#include "runtime/core/step_timers.hpp"

namespace metamorph {

Parameter* Transformer::param(const std::string& name) {
  Parameter* p = params_.find(name);
  require(p != nullptr, "model parameters lack '", name, "' required by the config");
  return p;
}

Transformer::Transformer(Backend& backend, const ModelConfig& config, ParameterSet& params,
                         TransformerOptions options, TensorParallel tp, PipelineStage stage,
                         ExpertExchange* experts)
    : backend_(backend),
      config_(config),
      params_(params),
      options_(options),
      tp_(std::move(tp)),
      stage_(stage) {
  if (stage_.end_layer < 0) stage_.end_layer = config.num_layers;
  if (stage_.first() || (stage_.last() && config.tie_word_embeddings)) {
    embed_ = param("model.embed_tokens.weight");
    vocab_offset_ = embed_->offset[0];
  }
  if (stage_.last()) {
    final_norm_ = param("model.norm.weight");
    head_ = config.tie_word_embeddings ? embed_ : param("lm_head.weight");
    vocab_offset_ = head_->offset[0];
  }
  if (config.moe.enabled() && experts == nullptr) {
    local_experts_ = std::make_unique<LocalExpertExchange>(config.moe.num_experts);
    experts = local_experts_.get();
  }
  layers_.reserve(static_cast<std::size_t>(stage_.end_layer - stage_.first_layer));
  for (std::int64_t l = stage_.first_layer; l < stage_.end_layer; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    DecoderLayerWeights w;
    w.input_norm = param(p + "input_layernorm.weight");
    w.post_attention_norm = param(p + "post_attention_layernorm.weight");
    w.attention.q_proj = param(p + "self_attn.q_proj.weight");
    w.attention.k_proj = param(p + "self_attn.k_proj.weight");
    w.attention.v_proj = param(p + "self_attn.v_proj.weight");
    w.attention.o_proj = param(p + "self_attn.o_proj.weight");
    if (config.attention_bias) {
      w.attention.q_bias = param(p + "self_attn.q_proj.bias");
      w.attention.k_bias = param(p + "self_attn.k_proj.bias");
      w.attention.v_bias = param(p + "self_attn.v_proj.bias");
    }
    if (config.qk_norm) {
      w.attention.q_norm = param(p + "self_attn.q_norm.weight");
      w.attention.k_norm = param(p + "self_attn.k_norm.weight");
    }
    if (config.is_moe_layer(l)) {
      w.moe = moe_weights(params_, config, l, *experts);
    } else {
      w.mlp.gate_proj = param(p + "mlp.gate_proj.weight");
      w.mlp.up_proj = param(p + "mlp.up_proj.weight");
      w.mlp.down_proj = param(p + "mlp.down_proj.weight");
    }
    layers_.emplace_back(backend, config, w, options.recompute, tp_, experts);
  }
}

std::vector<std::pair<std::int64_t, MoeBlock*>> Transformer::moe_blocks() {
  std::vector<std::pair<std::int64_t, MoeBlock*>> blocks;
  for (std::size_t i = 0; i < layers_.size(); ++i)
    if (MoeBlock* b = layers_[i].moe())
      blocks.emplace_back(stage_.first_layer + static_cast<std::int64_t>(i), b);
  return blocks;
}

Tensor Transformer::default_positions(std::int64_t seq) {
  // Written on the host, then moved to the backend's device (the identity on the CPU).
  Tensor positions = backend_.host_empty({seq}, DType::i32);
  for (std::int64_t i = 0; i < seq; ++i)
    positions.data<std::int32_t>()[i] = static_cast<std::int32_t>(i);
  return backend_.from_host(positions, DType::i32);
}

Tensor Transformer::stage_forward(const Tensor& tokens, const Tensor& input, bool keep) {
  return stage_forward(tokens, default_positions(tokens.dim(1)), options_.mask, input, keep);
}

void Transformer::check_positions(const Tensor& positions, std::int64_t seq) {
  MM_ASSERT(positions.numel() == seq && positions.dtype() == DType::i32, "positions ",
            shape_string(positions.shape()), " for sequence length ", seq);
  const Tensor host_positions = backend_.to_host(positions, DType::i32);
  const auto* pos = host_positions.data<std::int32_t>();
  for (std::int64_t i = 0; i < seq; ++i)
    require(pos[i] >= 0 && pos[i] < config_.max_position_embeddings, "position ", pos[i],
            " (sequence length ", seq, ") exceeds max_position_embeddings ",
            config_.max_position_embeddings);
}

Tensor Transformer::embed(const Tensor& ids) {
  Tensor x = backend_.activation({ids.numel(), config_.hidden_size});
  if (tp_.active()) {
    backend_.embedding_forward_sharded(embed_->value, ids, vocab_offset_, x);
    tp_.sum(x);
  } else {
    backend_.embedding_forward(embed_->value, ids, x);
  }
  return x;
}

void Transformer::final_norm(Pending& p, const Tensor& x) {
  p.final_in = x;
  p.final_rstd = backend_.empty({x.dim(0)});
  p.final_out = backend_.activation(x.shape());
  backend_.rmsnorm_forward(x, final_norm_->value, static_cast<float>(config_.rms_norm_eps),
                           p.final_out, p.final_rstd);
}

Tensor Transformer::stage_forward(const Tensor& tokens, const Tensor& positions,
                                  const AttentionMask& mask, const Tensor& input, bool keep) {
  MM_ASSERT(tokens.rank() == 2 && tokens.dtype() == DType::i32, "tokens must be i32 [batch, seq]");
  const std::int64_t batch = tokens.dim(0), seq = tokens.dim(1), n = batch * seq;
  check_positions(positions, seq);
  Pending p;
  p.ids = tokens.view({n});
  Tensor x;
  if (stage_.first()) {
    if (parameters_needed_) parameters_needed_(-1);
    const TimedRegion timed(backend_, "embedding");
    x = embed(p.ids);
  } else {
    MM_ASSERT(input.defined() && input.dim(0) == n, "stage input for ", n, " tokens");
    x = input;
  }
  std::int64_t index = stage_.first_layer;
  for (auto& layer : layers_) {
    if (parameters_needed_) parameters_needed_(index++);
    x = layer.forward(x, batch, positions, mask, keep);
    if (!keep) layer.release();
  }
  if (!stage_.last()) {
    if (keep) pending_.push_back(std::move(p));
    return x;
  }
  if (parameters_needed_) parameters_needed_(config_.num_layers);
  final_norm(p, x);
  Tensor out = p.final_out;
  if (keep) pending_.push_back(std::move(p));
  return out;
}

Tensor Transformer::head_backward(const Pending& p, const Tensor& targets, const Tensor& weights,
                                  float grad_scale, LossSum* loss) {
  const TimedRegion timed(backend_, "lm head and loss");
  const Tensor& h = p.final_out;
  const std::int64_t n = h.dim(0);
  Tensor logits_rows = backend_.activation({n, head_->value.dim(0)});
  backend_.matmul(h, false, head_->value, true, logits_rows);
  Tensor lse = backend_.empty({n});
  const Tensor flat_targets = targets.view({targets.numel()});
  const LossSum result = cross_entropy(logits_rows, flat_targets, weights, lse);
  if (loss != nullptr) *loss = result;
  // Backward, in place on the logits buffer.
  if (weights.defined() && tp_.active())
    backend_.weighted_cross_entropy_backward_sharded(
        logits_rows, flat_targets, lse, weights.view({weights.numel()}), options_.ignore_index,
        vocab_offset_, grad_scale, logits_rows);
  else if (weights.defined())
    backend_.weighted_cross_entropy_backward(logits_rows, flat_targets, lse,
                                             weights.view({weights.numel()}), options_.ignore_index,
                                             grad_scale, logits_rows);
  else if (tp_.active())
    backend_.cross_entropy_backward_sharded(logits_rows, flat_targets, lse, options_.ignore_index,
                                            vocab_offset_, grad_scale, logits_rows);
  else
    backend_.cross_entropy_backward(logits_rows, flat_targets, lse, options_.ignore_index,
                                    grad_scale, logits_rows);
  // The LM head's weight gradient runs while its input gradient is summed over the group
  // (vocabulary-parallel: every rank holds a partial dh); the final norm's backward waits.
  Tensor dh = backend_.activation(h.shape());
  backend_.matmul(logits_rows, false, head_->value, false, dh);
  PendingSum dh_sum = tp_.start_sum(dh);
  backend_.matmul(logits_rows, true, h, false, head_->grad, 1.0f, 1.0f);
  dh_sum.wait();
  logits_rows = Tensor();
  Tensor dx = backend_.activation(h.shape());
  backend_.rmsnorm_backward(dh, p.final_in, final_norm_->value, p.final_rstd, dx,
                            final_norm_->grad);
  return dx;
}

void Transformer::embedding_backward(const Tensor& ids, const Tensor& dx) {
  const TimedRegion timed(backend_, "embedding");
  if (tp_.active())
    backend_.embedding_backward_sharded(ids, dx, vocab_offset_, embed_->grad);
  else
    backend_.embedding_backward(ids, dx, embed_->grad);
}

Tensor Transformer::stage_backward(const Tensor& targets, const Tensor& grad_output,
                                   float grad_scale, LossSum* loss, const Tensor& weights) {
  MM_ASSERT(!pending_.empty(), "Transformer::stage_backward without a kept forward");
  Pending p = std::move(pending_.front());
  pending_.pop_front();
  Tensor dx = stage_.last() ? head_backward(p, targets, weights, grad_scale, loss) : grad_output;
  if (gradients_ready_ && stage_.last()) gradients_ready_(config_.num_layers);
  // A micro-batch's MoE aux and z losses (means over its tokens) count with its share of the
  // global batch: grad_scale is 1 / (global tokens), so the weight is tokens * grad_scale.
  const float moe_loss_scale = static_cast<float>(p.ids.numel()) * grad_scale;
  std::int64_t layer = stage_.end_layer;
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
    dx = it->backward(dx, moe_loss_scale);
    if (gradients_ready_) gradients_ready_(--layer);
  }
  if (!stage_.first()) return dx;
  embedding_backward(p.ids, dx);
  return Tensor();
}

std::array<LossSum, 2> Transformer::forward_backward_interleaved(const std::array<Pass, 2>& passes,
                                                                 float grad_scale) {
  MM_ASSERT(stage_.first() && stage_.last(), "forward_backward_interleaved needs the whole model");
  const std::size_t layers = layers_.size();
  MM_ASSERT(layers > 0, "forward_backward_interleaved on a model without layers");
  std::array<Pending, 2> p;
  std::array<Tensor, 2> x, positions;
  std::array<std::int64_t, 2> batch{};
  if (parameters_needed_) parameters_needed_(-1);
  for (std::size_t h = 0; h < 2; ++h) {
    const Tensor& tokens = passes[h].tokens;
    MM_ASSERT(tokens.rank() == 2 && tokens.dtype() == DType::i32,
              "tokens must be i32 [batch, seq]");
    batch[h] = tokens.dim(0);
    positions[h] =
        passes[h].positions.defined() ? passes[h].positions : default_positions(tokens.dim(1));
    check_positions(positions[h], tokens.dim(1));
    p[h].ids = tokens.view({tokens.numel()});
    x[h] = embed(p[h].ids);
  }
  // Forward. Layer l's phases in the order A-attention, B-attention, A-FFN, B-FFN: each sum is
  // in flight while the other pass's next phase computes; layer l - 1's FFN sums are waited for
  // just before each pass's attention of layer l.
  for (std::size_t l = 0; l < layers; ++l) {
    if (parameters_needed_) parameters_needed_(stage_.first_layer + static_cast<std::int64_t>(l));
    for (std::size_t h = 0; h < 2; ++h) {
      if (l > 0) x[h] = layers_[l - 1].forward_finish(h);
      layers_[l].forward_attention(x[h], batch[h], positions[h], passes[h].mask);
    }
    for (std::size_t h = 0; h < 2; ++h) layers_[l].forward_ffn(h);
  }
  for (std::size_t h = 0; h < 2; ++h) x[h] = layers_.back().forward_finish(h);
  if (parameters_needed_) parameters_needed_(config_.num_layers);
  // Backward: the loss and head of A then B, then the layers in reverse with the same phase
  // order. Gradients accumulate pass A's before pass B's everywhere, as two forward_backward
  // calls would.
  std::array<LossSum, 2> loss;
  std::array<float, 2> moe_loss_scale{};
  for (std::size_t h = 0; h < 2; ++h) {
    final_norm(p[h], x[h]);
    x[h] = head_backward(p[h], passes[h].targets, passes[h].weights, grad_scale, &loss[h]);
    moe_loss_scale[h] = static_cast<float>(p[h].ids.numel()) * grad_scale;
  }
  if (gradients_ready_) gradients_ready_(config_.num_layers);
  for (std::size_t l = layers; l-- > 0;) {
    for (std::size_t h = 0; h < 2; ++h) {
      if (l + 1 < layers) x[h] = layers_[l + 1].backward_finish();
      layers_[l].backward_ffn(h, x[h], moe_loss_scale[h]);
    }
    if (l + 1 < layers && gradients_ready_)
      gradients_ready_(stage_.first_layer + static_cast<std::int64_t>(l) + 1);
    for (std::size_t h = 0; h < 2; ++h) layers_[l].backward_attention(h);
  }
  for (std::size_t h = 0; h < 2; ++h) x[h] = layers_.front().backward_finish();
  if (gradients_ready_) gradients_ready_(stage_.first_layer);
  for (std::size_t h = 0; h < 2; ++h) embedding_backward(p[h].ids, x[h]);
  return loss;
}

LossSum Transformer::head_loss(const Tensor& hidden, const Tensor& targets, const Tensor& weights) {
  MM_ASSERT(stage_.last(), "head_loss on a stage without the LM head");
  Tensor logits_rows = backend_.activation({hidden.dim(0), head_->value.dim(0)});
  backend_.matmul(hidden, false, head_->value, true, logits_rows);
  Tensor lse = backend_.empty({logits_rows.dim(0)});
  return cross_entropy(logits_rows, targets.view({targets.numel()}), weights, lse);
}

Tensor Transformer::logits(const Tensor& tokens) {
  return logits(tokens, default_positions(tokens.dim(1)), options_.mask);
}

Tensor Transformer::logits(const Tensor& tokens, const Tensor& positions,
                           const AttentionMask& mask) {
  MM_ASSERT(stage_.first() && stage_.last(), "logits() needs the whole model on one stage");
  const Tensor h = stage_forward(tokens, positions, mask, Tensor(), false);
  // f32 as the contract says, also where activations are bf16: the GEMM accumulates in f32
  // anyway, and rounding logits to 8 mantissa bits would cost readers (decoders' confidences,
  // comparisons with other implementations) precision for nothing.
  Tensor out = backend_.empty({h.dim(0), head_->value.dim(0)}, DType::f32);
  backend_.matmul(h, false, head_->value, true, out);
  return out;
}

LossSum Transformer::loss(const Tensor& tokens, const Tensor& targets) {
  return loss(tokens, default_positions(tokens.dim(1)), targets, options_.mask);
}

LossSum Transformer::loss(const Tensor& tokens, const Tensor& positions, const Tensor& targets,
                          const AttentionMask& mask, const Tensor& weights) {
  MM_ASSERT(stage_.first() && stage_.last(), "loss() needs the whole model on one stage");
  return head_loss(stage_forward(tokens, positions, mask, Tensor(), false), targets, weights);
}

LossSum Transformer::forward_backward(const Tensor& tokens, const Tensor& targets,
                                      float grad_scale) {
  return forward_backward(tokens, default_positions(tokens.dim(1)), targets, options_.mask,
                          grad_scale);
}

LossSum Transformer::forward_backward(const Tensor& tokens, const Tensor& positions,
                                      const Tensor& targets, const AttentionMask& mask,
                                      float grad_scale, const Tensor& weights) {
  MM_ASSERT(stage_.first() && stage_.last(), "forward_backward() needs the whole model");
  stage_forward(tokens, positions, mask, Tensor(), true);
  LossSum result;
  stage_backward(targets, Tensor(), grad_scale, &result, weights);
  return result;
}

LossSum Transformer::cross_entropy(const Tensor& logits, const Tensor& targets,
                                   const Tensor& weights, Tensor& lse) {
  LossSum result;
  if (tp_.active()) {
    // Vocabulary-parallel: global row max, then the shards' exp-sums and target logits.
    const std::int64_t n = logits.dim(0);
    Tensor max = backend_.empty({n}), sum_exp = backend_.empty({n}), target = backend_.empty({n});
    backend_.row_max(logits, max);
    tp_.max(max);
    backend_.cross_entropy_stats(logits, targets, vocab_offset_, max, sum_exp, target);
    tp_.sum(sum_exp);
    tp_.sum(target);
    result.sum = weights.defined()
                     ? backend_.weighted_cross_entropy_finish(max, sum_exp, target, targets,
                                                              weights.view({weights.numel()}),
                                                              options_.ignore_index, lse)
                     : backend_.cross_entropy_finish(max, sum_exp, target, targets,
                                                     options_.ignore_index, lse);
  } else if (weights.defined()) {
    result.sum = backend_.weighted_cross_entropy_forward(
        logits, targets, weights.view({weights.numel()}), options_.ignore_index, lse);
  } else {
    result.sum = backend_.cross_entropy_forward(logits, targets, options_.ignore_index, lse);
  }
  const Tensor host_targets = backend_.to_host(targets, DType::i32);
  const auto* t = host_targets.data<std::int32_t>();
  for (std::int64_t i = 0; i < targets.numel(); ++i) result.tokens += t[i] != options_.ignore_index;
  return result;
}

KvCache Transformer::make_kv_cache(std::int64_t capacity) {
  require(capacity >= 1, "KV cache capacity ", capacity, " must be positive");
  require(!tp_.active(), "KV-cached decoding runs on one rank (no tensor parallelism)");
  MM_ASSERT(stage_.first() && stage_.last(), "KV-cached decoding needs the whole model");
  KvCache cache;
  for (std::int64_t l = 0; l < config_.num_layers; ++l) {
    cache.keys.push_back(backend_.activation({capacity, config_.num_kv_heads, config_.head_dim}));
    cache.values.push_back(backend_.activation({capacity, config_.num_kv_heads, config_.head_dim}));
  }
  return cache;
}

Tensor Transformer::logits_cached(const Tensor& tokens, const Tensor& positions,
                                  const AttentionMask& mask, KvCache& cache, std::int64_t commit,
                                  std::int64_t first_logit_row) {
  const std::int64_t s = tokens.numel();
  MM_ASSERT(!tp_.active(), "KV-cached decoding under tensor parallelism");
  MM_ASSERT(tokens.dtype() == DType::i32 && positions.numel() == s && commit >= 0 && commit <= s,
            "logits_cached tokens ", shape_string(tokens.shape()), " positions ",
            shape_string(positions.shape()), " commit ", commit);
  require(cache.length + s <= cache.capacity(), "context of ", cache.length + s,
          " tokens exceeds the KV cache capacity ", cache.capacity());
  const Tensor host_positions = backend_.to_host(positions, DType::i32);
  const auto* pos = host_positions.data<std::int32_t>();
  for (std::int64_t i = 0; i < s; ++i)
    require(pos[i] >= 0 && pos[i] < config_.max_position_embeddings, "position ", pos[i],
            " exceeds max_position_embeddings ", config_.max_position_embeddings);
  Tensor x = backend_.activation({s, config_.hidden_size});
  backend_.embedding_forward(embed_->value, tokens.view({s}), x);
  for (std::size_t l = 0; l < layers_.size(); ++l)
    x = layers_[l].forward_cached(x, positions, mask, cache.keys[l], cache.values[l], cache.length);
  MM_ASSERT(first_logit_row >= 0 && first_logit_row < s, "logits from row ", first_logit_row,
            " of ", s);
  const std::int64_t rows = s - first_logit_row;
  x = x.slice(first_logit_row, s);
  Tensor rstd = backend_.empty({rows}), h = backend_.activation(x.shape());
  backend_.rmsnorm_forward(x, final_norm_->value, static_cast<float>(config_.rms_norm_eps), h,
                           rstd);
  Tensor out = backend_.activation({rows, config_.vocab_size});
  backend_.matmul(h, false, head_->value, true, out);
  cache.length += commit;
  return out;
}

}  // namespace metamorph

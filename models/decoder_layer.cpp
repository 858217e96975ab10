#include "models/decoder_layer.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

DecoderLayer::DecoderLayer(Backend& backend, const ModelConfig& config, DecoderLayerWeights weights,
                           bool recompute, TensorParallel tp, ExpertExchange* experts)
    : backend_(backend),
      eps_(static_cast<float>(config.rms_norm_eps)),
      w_(weights),
      recompute_(recompute),
      tp_(std::move(tp)),
      attention_(backend, config, weights.attention) {
  if (weights.moe.router == nullptr) {
    mlp_.emplace(backend, weights.mlp);
    return;
  }
  MM_ASSERT(experts != nullptr, "an MoE layer needs an ExpertExchange");
  moe_.emplace(backend, config.moe, weights.moe, *experts);
}

Tensor DecoderLayer::ffn_forward(const Tensor& x, bool record_stats) {
  return moe_ ? moe_->forward(x, record_stats) : mlp_->forward(x);
}

Tensor DecoderLayer::run_forward(Pending& p, bool record_stats) {
  const Tensor& x = p.x;
  const std::int64_t tokens = x.dim(0);
  Tensor h1 = backend_.activation(x.shape());
  p.rstd1 = backend_.empty({tokens});
  backend_.rmsnorm_forward(x, w_.input_norm->value, eps_, h1, p.rstd1);
  p.mid = attention_.forward(h1, p.batch, p.positions, p.mask);
  tp_.sum(p.mid);
  backend_.axpy(1.0f, x, p.mid);
  Tensor h2 = backend_.activation(x.shape());
  p.rstd2 = backend_.empty({tokens});
  backend_.rmsnorm_forward(p.mid, w_.post_attention_norm->value, eps_, h2, p.rstd2);
  Tensor y = ffn_forward(h2, record_stats);
  tp_.sum(y);
  backend_.axpy(1.0f, p.mid, y);
  return y;
}

Tensor DecoderLayer::forward(const Tensor& x, std::int64_t batch, const Tensor& positions,
                             const AttentionMask& mask, bool record_stats) {
  Pending p;
  p.x = x;
  p.batch = batch;
  p.positions = positions;
  p.mask = mask;
  Tensor y = run_forward(p, record_stats);
  if (recompute_) {
    // Sublayers hold nothing between forward and backward; backward re-runs this forward.
    attention_.release();
    if (mlp_) mlp_->release();
    if (moe_) moe_->release();
    p.mid = p.rstd1 = p.rstd2 = Tensor();
  }
  pending_.push_back(std::move(p));
  return y;
}

Tensor DecoderLayer::forward_cached(const Tensor& x, const Tensor& positions,
                                    const AttentionMask& mask, Tensor& cache_k, Tensor& cache_v,
                                    std::int64_t cached) {
  const std::int64_t tokens = x.dim(0);
  Tensor h1 = backend_.activation(x.shape()), rstd = backend_.empty({tokens});
  backend_.rmsnorm_forward(x, w_.input_norm->value, eps_, h1, rstd);
  Tensor mid = attention_.forward_cached(h1, positions, mask, cache_k, cache_v, cached);
  backend_.axpy(1.0f, x, mid);
  Tensor h2 = backend_.activation(x.shape());
  backend_.rmsnorm_forward(mid, w_.post_attention_norm->value, eps_, h2, rstd);
  Tensor y = ffn_forward(h2, false);
  if (mlp_) mlp_->release();
  if (moe_) moe_->release();
  backend_.axpy(1.0f, mid, y);
  return y;
}

Tensor DecoderLayer::backward(const Tensor& dy, float moe_loss_scale) {
  MM_ASSERT(!pending_.empty(), "DecoderLayer::backward without forward");
  Pending& p = pending_.front();
  if (recompute_) run_forward(p, false);
  // d(mid) = dy + norm2^T mlp^T dy
  // Under TP the MoE block's outputs and input gradients are partial sums over the group (its
  // experts and shared expert are split like the dense MLP), but every rank computes the whole
  // aux/z loss: each adds 1/T of its gradient so that the group's sum counts it once.
  // Without TP there is no sum to hide the weight gradients behind: the sublayers run them at
  // once, and the MoE block's gate and up gradients are not kept through its combine.
  DeferredWeightGrads weight_grads;
  DeferredWeightGrads* later = tp_.active() ? &weight_grads : nullptr;
  Tensor dh2 = moe_ ? moe_->backward(dy, moe_loss_scale / static_cast<float>(tp_.size), later)
                    : mlp_->backward(dy, later);
  sum_behind_weight_grads(dh2, weight_grads);
  Tensor dmid = backend_.activation(dy.shape());
  backend_.rmsnorm_backward(dh2, p.mid, w_.post_attention_norm->value, p.rstd2, dmid,
                            w_.post_attention_norm->grad);
  dh2 = Tensor();
  backend_.axpy(1.0f, dy, dmid);
  Tensor dh1 = attention_.backward(dmid, later);
  sum_behind_weight_grads(dh1, weight_grads);
  Tensor dx = backend_.activation(dy.shape());
  backend_.rmsnorm_backward(dh1, p.x, w_.input_norm->value, p.rstd1, dx, w_.input_norm->grad);
  backend_.axpy(1.0f, dmid, dx);
  pending_.pop_front();
  return dx;
}

void DecoderLayer::sum_behind_weight_grads(Tensor& dx, DeferredWeightGrads& weight_grads) {
  // Megatron's asynchronous TP all-reduce: the weight gradients do not need the sum, the norm's
  // backward does. On a GPU the all-reduce runs on the communicator's stream beside these GEMMs.
  PendingSum sum = tp_.start_sum(dx);
  weight_grads.run();
  sum.wait();
}

void DecoderLayer::release() {
  attention_.release();
  if (mlp_) mlp_->release();
  if (moe_) moe_->release();
  pending_.clear();
}

}  // namespace metamorph

#include "models/decoder_layer.hpp"

#include <optional>
#include <utility>

#include "runtime/core/error.hpp"
#include "runtime/core/step_timers.hpp"

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

DecoderLayer::Pending DecoderLayer::pending_for(const Tensor& x, std::int64_t batch,
                                                const Tensor& positions,
                                                const AttentionMask& mask) {
  Pending p;
  p.x = x;
  p.batch = batch;
  p.positions = positions;
  p.mask = mask;
  return p;
}

DecoderLayer::Pending& DecoderLayer::pending_at(std::size_t slot) {
  MM_ASSERT(slot < pending_.size(), "decoder layer pass ", slot, " of ", pending_.size(),
            " pending");
  return pending_[slot];
}

void DecoderLayer::start_partial_sum(Pending& p, bool overlap) {
  if (overlap) {
    p.sum = std::make_shared<PendingSum>(tp_.start_sum(p.partial));
    return;
  }
  std::optional<TimedRegion> timed;
  if (tp_.active()) timed.emplace(backend_, "tp all-reduce");
  tp_.sum(p.partial);
}

void DecoderLayer::wait_partial_sum(Pending& p) {
  if (!p.sum) return;
  // What the compute stream still waits for of a sum started earlier.
  std::optional<TimedRegion> timed;
  if (tp_.active()) timed.emplace(backend_, "tp all-reduce");
  p.sum->wait();
  p.sum = nullptr;
}

void DecoderLayer::attention_phase(Pending& p, bool overlap) {
  {
    const TimedRegion timed(backend_, "attention forward");
    const std::int64_t tokens = p.x.dim(0);
    Tensor h1 = backend_.activation(p.x.shape());
    p.rstd1 = backend_.empty({tokens});
    backend_.rmsnorm_forward(p.x, w_.input_norm->value, eps_, h1, p.rstd1);
    p.partial = attention_.forward(h1, p.batch, p.positions, p.mask);
  }
  start_partial_sum(p, overlap);
}

void DecoderLayer::ffn_phase(Pending& p, bool overlap) {
  wait_partial_sum(p);
  {
    const TimedRegion timed(backend_, moe_ ? "moe forward" : "mlp forward");
    p.mid = std::exchange(p.partial, Tensor());
    Tensor h2 = backend_.activation(p.x.shape());
    p.rstd2 = backend_.empty({p.x.dim(0)});
    backend_.add_rmsnorm_forward(p.x, p.mid, w_.post_attention_norm->value, eps_, h2, p.rstd2);
    p.partial = ffn_forward(h2, p.record_stats);
  }
  start_partial_sum(p, overlap);
}

Tensor DecoderLayer::finish_forward_phase(Pending& p) {
  wait_partial_sum(p);
  Tensor y = std::exchange(p.partial, Tensor());
  backend_.axpy(1.0f, p.mid, y);
  return y;
}

Tensor DecoderLayer::run_forward(Pending& p, bool record_stats) {
  p.record_stats = record_stats;
  attention_phase(p, false);
  ffn_phase(p, false);
  return finish_forward_phase(p);
}

void DecoderLayer::drop_for_recompute(Pending& p) {
  if (!recompute_) return;
  // Sublayers hold nothing between forward and backward; backward re-runs this forward.
  attention_.release();
  if (mlp_) mlp_->release();
  if (moe_) moe_->release();
  p.mid = p.rstd1 = p.rstd2 = Tensor();
}

Tensor DecoderLayer::forward(const Tensor& x, std::int64_t batch, const Tensor& positions,
                             const AttentionMask& mask, bool record_stats) {
  Pending p = pending_for(x, batch, positions, mask);
  Tensor y = run_forward(p, record_stats);
  drop_for_recompute(p);
  pending_.push_back(std::move(p));
  return y;
}

void DecoderLayer::forward_attention(const Tensor& x, std::int64_t batch, const Tensor& positions,
                                     const AttentionMask& mask) {
  pending_.push_back(pending_for(x, batch, positions, mask));
  attention_phase(pending_.back(), true);
}

void DecoderLayer::forward_ffn(std::size_t slot) {
  ffn_phase(pending_at(slot), true);
}

Tensor DecoderLayer::forward_finish(std::size_t slot) {
  Pending& p = pending_at(slot);
  Tensor y = finish_forward_phase(p);
  // Under recompute the sublayers drop every pass they hold: the other pass of the pair has
  // finished its FFN already, so it needs only its own Pending's tensors to finish.
  drop_for_recompute(p);
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

void DecoderLayer::ffn_backward_phase(Pending& p, const Tensor& dy, float moe_loss_scale) {
  if (recompute_) {
    const TimedRegion timed(backend_, "recompute forward");
    run_forward(p, false);
  }
  // d(mid) = dy + norm2^T mlp^T dy
  // Under TP the MoE block's outputs and input gradients are partial sums over the group (its
  // experts and shared expert are split like the dense MLP), but every rank computes the whole
  // aux/z loss: each adds 1/T of its gradient so that the group's sum counts it once.
  p.residual_grad = dy;
  sublayer_backward(p, [&](DeferredWeightGrads* later) {
    const TimedRegion timed(backend_, moe_ ? "moe backward" : "mlp backward");
    return moe_ ? moe_->backward(dy, moe_loss_scale / static_cast<float>(tp_.size), later)
                : mlp_->backward(dy, later);
  });
}

void DecoderLayer::sublayer_backward(Pending& p,
                                     const std::function<Tensor(DeferredWeightGrads*)>& backward) {
  // Megatron's asynchronous TP all-reduce: the weight gradients do not need the sum, the norm's
  // backward does, so they run while it is in flight (on a GPU the all-reduce runs on the
  // communicator's stream beside these GEMMs). Without TP there is no sum to hide them behind:
  // the sublayers run them at once, and the MoE block's gate and up gradients are not kept
  // through its combine.
  DeferredWeightGrads weight_grads;
  p.partial = backward(tp_.active() ? &weight_grads : nullptr);
  start_partial_sum(p, true);
  const TimedRegion timed(backend_, "deferred weight gradients");
  weight_grads.run();
}

void DecoderLayer::attention_backward_phase(Pending& p) {
  wait_partial_sum(p);
  Tensor dmid = backend_.activation(p.residual_grad.shape());
  {
    const TimedRegion timed(backend_, "norm backward");
    backend_.rmsnorm_backward_add(p.partial, p.mid, w_.post_attention_norm->value, p.rstd2,
                                  p.residual_grad, dmid, w_.post_attention_norm->grad);
  }
  p.partial = Tensor();
  p.residual_grad = dmid;
  sublayer_backward(p, [&](DeferredWeightGrads* later) {
    const TimedRegion timed(backend_, "attention backward");
    return attention_.backward(dmid, later);
  });
}

Tensor DecoderLayer::finish_backward_phase(Pending& p) {
  wait_partial_sum(p);
  const TimedRegion timed(backend_, "norm backward");
  Tensor dx = backend_.activation(p.residual_grad.shape());
  backend_.rmsnorm_backward_add(p.partial, p.x, w_.input_norm->value, p.rstd1, p.residual_grad, dx,
                                w_.input_norm->grad);
  return dx;
}

Tensor DecoderLayer::backward(const Tensor& dy, float moe_loss_scale) {
  MM_ASSERT(!pending_.empty(), "DecoderLayer::backward without forward");
  Pending& p = pending_.front();
  ffn_backward_phase(p, dy, moe_loss_scale);
  attention_backward_phase(p);
  return backward_finish();
}

void DecoderLayer::backward_ffn(std::size_t slot, const Tensor& dy, float moe_loss_scale) {
  ffn_backward_phase(pending_at(slot), dy, moe_loss_scale);
}

void DecoderLayer::backward_attention(std::size_t slot) {
  attention_backward_phase(pending_at(slot));
}

Tensor DecoderLayer::backward_finish() {
  MM_ASSERT(!pending_.empty(), "DecoderLayer::backward_finish without forward");
  Tensor dx = finish_backward_phase(pending_.front());
  pending_.pop_front();
  return dx;
}

void DecoderLayer::release() {
  attention_.release();
  if (mlp_) mlp_->release();
  if (moe_) moe_->release();
  pending_.clear();
}

}  // namespace metamorph

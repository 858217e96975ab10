#include "models/decoder_layer.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

DecoderLayer::DecoderLayer(Backend& backend, const ModelConfig& config,
                           DecoderLayerWeights weights, bool recompute, TensorParallel tp)
    : backend_(backend),
      eps_(static_cast<float>(config.rms_norm_eps)),
      w_(weights),
      recompute_(recompute),
      tp_(std::move(tp)),
      attention_(backend, config, weights.attention),
      mlp_(backend, weights.mlp) {}

Tensor DecoderLayer::run_forward(const Tensor& x) {
  const std::int64_t tokens = x.dim(0);
  Tensor h1 = backend_.empty(x.shape());
  rstd1_ = backend_.empty({tokens});
  backend_.rmsnorm_forward(x, w_.input_norm->value, eps_, h1, rstd1_);
  mid_ = attention_.forward(h1, batch_, positions_, mask_);
  tp_.sum(mid_);
  backend_.axpy(1.0f, x, mid_);
  Tensor h2 = backend_.empty(x.shape());
  rstd2_ = backend_.empty({tokens});
  backend_.rmsnorm_forward(mid_, w_.post_attention_norm->value, eps_, h2, rstd2_);
  Tensor y = mlp_.forward(h2);
  tp_.sum(y);
  backend_.axpy(1.0f, mid_, y);
  return y;
}

Tensor DecoderLayer::forward(const Tensor& x, std::int64_t batch, const Tensor& positions,
                             const AttentionMask& mask) {
  x_ = x;
  batch_ = batch;
  positions_ = positions;
  mask_ = mask;
  Tensor y = run_forward(x);
  if (recompute_) {
    attention_.release();
    mlp_.release();
    mid_ = rstd1_ = rstd2_ = Tensor();
  }
  return y;
}

Tensor DecoderLayer::forward_cached(const Tensor& x, const Tensor& positions,
                                    const AttentionMask& mask, Tensor& cache_k, Tensor& cache_v,
                                    std::int64_t cached) {
  const std::int64_t tokens = x.dim(0);
  Tensor h1 = backend_.empty(x.shape()), rstd = backend_.empty({tokens});
  backend_.rmsnorm_forward(x, w_.input_norm->value, eps_, h1, rstd);
  Tensor mid = attention_.forward_cached(h1, positions, mask, cache_k, cache_v, cached);
  backend_.axpy(1.0f, x, mid);
  Tensor h2 = backend_.empty(x.shape());
  backend_.rmsnorm_forward(mid, w_.post_attention_norm->value, eps_, h2, rstd);
  Tensor y = mlp_.forward(h2);
  mlp_.release();
  backend_.axpy(1.0f, mid, y);
  return y;
}

Tensor DecoderLayer::backward(const Tensor& dy) {
  MM_ASSERT(x_.defined(), "DecoderLayer::backward without forward");
  if (recompute_) run_forward(x_);
  // d(mid) = dy + norm2^T mlp^T dy
  Tensor dh2 = mlp_.backward(dy);
  tp_.sum(dh2);
  Tensor dmid = backend_.empty(dy.shape());
  backend_.rmsnorm_backward(dh2, mid_, w_.post_attention_norm->value, rstd2_, dmid,
                            w_.post_attention_norm->grad);
  dh2 = Tensor();
  backend_.axpy(1.0f, dy, dmid);
  Tensor dh1 = attention_.backward(dmid);
  tp_.sum(dh1);
  Tensor dx = backend_.empty(dy.shape());
  backend_.rmsnorm_backward(dh1, x_, w_.input_norm->value, rstd1_, dx, w_.input_norm->grad);
  backend_.axpy(1.0f, dmid, dx);
  release();
  return dx;
}

void DecoderLayer::release() {
  attention_.release();
  mlp_.release();
  x_ = mid_ = rstd1_ = rstd2_ = positions_ = Tensor();
}

}  // namespace metamorph

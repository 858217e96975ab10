#include "models/mlp.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

Tensor SwiGluMlp::forward(const Tensor& x) {
  const std::int64_t tokens = x.dim(0), ffn = w_.gate_proj->value.dim(0);
  Saved s;
  s.x = x;
  s.gate = backend_.activation({tokens, ffn});
  s.up = backend_.activation({tokens, ffn});
  s.act = backend_.activation({tokens, ffn});
  backend_.matmul(x, false, w_.gate_proj->value, true, s.gate);
  backend_.matmul(x, false, w_.up_proj->value, true, s.up);
  backend_.swiglu_forward(s.gate, s.up, s.act);
  Tensor y = backend_.activation({tokens, w_.down_proj->value.dim(0)});
  backend_.matmul(s.act, false, w_.down_proj->value, true, y);
  saved_.push_back(std::move(s));
  return y;
}

Tensor SwiGluMlp::backward(const Tensor& dy, DeferredWeightGrads* later) {
  MM_ASSERT(!saved_.empty(), "SwiGluMlp::backward without forward");
  Saved& s = saved_.front();
  backend_.matmul(dy, true, s.act, false, w_.down_proj->grad, 1.0f, 1.0f);
  // The activation's buffer is no longer needed once its weight gradient is formed.
  Tensor dact = s.act;
  backend_.matmul(dy, false, w_.down_proj->value, false, dact);
  Tensor dgate = s.gate, dup = s.up;
  {
    Tensor dg = backend_.activation(s.gate.shape()), du = backend_.activation(s.up.shape());
    backend_.swiglu_backward(dact, s.gate, s.up, dg, du);
    dgate = dg;
    dup = du;
  }
  s.act = Tensor();
  s.gate = Tensor();
  s.up = Tensor();
  dact = Tensor();
  Tensor dx = backend_.activation(s.x.shape());
  backend_.matmul(dgate, false, w_.gate_proj->value, false, dx);
  backend_.matmul(dup, false, w_.up_proj->value, false, dx, 1.0f, 1.0f);
  run_or_defer(later, [this, dgate, dup, x = s.x] {
    backend_.matmul(dgate, true, x, false, w_.gate_proj->grad, 1.0f, 1.0f);
    backend_.matmul(dup, true, x, false, w_.up_proj->grad, 1.0f, 1.0f);
  });
  saved_.pop_front();
  return dx;
}

}  // namespace metamorph

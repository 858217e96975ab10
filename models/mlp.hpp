#pragma once
// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
#include <deque>

#include "models/deferred_weight_grads.hpp"
#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

struct MlpWeights {
  Parameter* gate_proj = nullptr;
  Parameter* up_proj = nullptr;
  Parameter* down_proj = nullptr;
};

class SwiGluMlp {
 public:
  SwiGluMlp(Backend& backend, MlpWeights weights) : backend_(backend), w_(weights) {}

  // x [tokens, hidden] -> [tokens, hidden]
  Tensor forward(const Tensor& x);
  // Returns dx for the oldest pending forward (FIFO); accumulates weight grads; releases that
  // forward's activations. With `later`, the gate and up projections' weight-gradient GEMMs are
  // left there for the caller to run (behind the start of dx's TP all-reduce); down_proj's runs
  // here, before its input (the activation) is overwritten by its own gradient.
  Tensor backward(const Tensor& dy, DeferredWeightGrads* later = nullptr);
  void release() { saved_.clear(); }

 private:
  struct Saved {
    Tensor x, gate, up, act;
  };
  Backend& backend_;
  MlpWeights w_;
  std::deque<Saved> saved_;
};

}  // namespace metamorph

#pragma once
// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
#include <optional>

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
  // Returns dx; accumulates weight grads; releases saved activations.
  Tensor backward(const Tensor& dy);
  void release() { saved_.reset(); }

 private:
  struct Saved {
    Tensor x, gate, up, act;
  };
  Backend& backend_;
  MlpWeights w_;
  std::optional<Saved> saved_;
};

}  // namespace metamorph

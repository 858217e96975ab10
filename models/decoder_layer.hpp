#pragma once
// One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(.)).
// With recompute on, forward keeps only the block's input and backward re-runs the forward.
#include <deque>

#include "models/attention.hpp"
#include "models/mlp.hpp"
#include "models/tensor_parallel.hpp"

namespace metamorph {

struct DecoderLayerWeights {
  Parameter* input_norm = nullptr;
  Parameter* post_attention_norm = nullptr;
  AttentionWeights attention;
  MlpWeights mlp;
};

class DecoderLayer {
 public:
  // Under tensor parallelism the weights are this rank's shards; the block sums the partial
  // outputs of attention and MLP (forward) and their partial input gradients (backward).
  DecoderLayer(Backend& backend, const ModelConfig& config, DecoderLayerWeights weights,
               bool recompute, TensorParallel tp = {});

  Tensor forward(const Tensor& x, std::int64_t batch, const Tensor& positions,
                 const AttentionMask& mask);
  // KV-cached inference for one sequence (see Attention::forward_cached); keeps nothing.
  Tensor forward_cached(const Tensor& x, const Tensor& positions, const AttentionMask& mask,
                        Tensor& cache_k, Tensor& cache_v, std::int64_t cached);
  // Returns dx of the oldest pending forward (several may be pending under a pipeline
  // schedule; they are consumed in FIFO order); accumulates weight grads; releases what that
  // forward kept.
  Tensor backward(const Tensor& dy);
  void release();

 private:
  // What one forward keeps for its backward.
  struct Pending {
    Tensor x, mid, rstd1, rstd2, positions;
    AttentionMask mask;
    std::int64_t batch = 0;
  };
  Tensor run_forward(Pending& p);

  Backend& backend_;
  float eps_;
  DecoderLayerWeights w_;
  bool recompute_;
  TensorParallel tp_;
  Attention attention_;
  SwiGluMlp mlp_;
  std::deque<Pending> pending_;
};

}  // namespace metamorph

#pragma once
// Small models for the growth tests: configs, non-trivial random weights, and a short training
// run on a learnable synthetic sequence so "trained" sources are not near-uniform predictors.
#include <cstdint>
#include <nlohmann/json.hpp>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "runtime/core/backend.hpp"
#include "runtime/rng/philox.hpp"
#include "runtime/train/optimizer.hpp"

namespace metamorph::test {

struct Shape4 {
  std::int64_t hidden, ffn, layers, heads, kv_heads;
};

inline ModelConfig grow_config(const Shape4& s, bool tied, bool bias, bool qk_norm = false,
                               std::int64_t vocab = 29, double init_range = 0.3) {
  return model_config_from_json({{"vocab_size", vocab},
                                 {"hidden_size", s.hidden},
                                 {"intermediate_size", s.ffn},
                                 {"num_hidden_layers", s.layers},
                                 {"num_attention_heads", s.heads},
                                 {"num_key_value_heads", s.kv_heads},
                                 {"head_dim", 4},
                                 {"rope_theta", 1000.0},
                                 {"rms_norm_eps", 1e-5},
                                 {"tie_word_embeddings", tied},
                                 {"attention_bias", bias},
                                 {"initializer_range", init_range},
                                 {"max_position_embeddings", 64},
                                 {"metamorph", {{"qk_norm", qk_norm}}}});
}

// init_parameters plus jitter on norms and biases, so every parameter kind matters.
inline ParameterSet random_parameters(Backend& backend, const ModelConfig& config,
                                      std::uint64_t seed) {
  ParameterSet params = metamorph::make_parameters(backend, config);
  init_parameters(params, config, seed);
  const rng::Stream jitter(seed, "grow.test.jitter");
  std::uint64_t counter = 0;
  for (auto& p : params.all()) {
    if (p.weight_decay) continue;
    float* v = p.value.data<float>();
    for (std::int64_t i = 0; i < p.value.numel(); ++i) v[i] += 0.3f * jitter.normal(counter++);
  }
  return params;
}

// Rows of a noisy affine sequence x[i+1] = (5 x[i] + 3) mod V, one token in eight random:
// learnable by a tiny model, so a short run moves the loss well below ln(V).
inline void synthetic_batch(Backend& backend, std::int64_t vocab, std::int64_t batch,
                            std::int64_t seq, std::uint64_t seed, Tensor& tokens, Tensor& targets) {
  tokens = backend.empty({batch, seq}, DType::i32);
  targets = backend.empty({batch, seq}, DType::i32);
  const rng::Stream s(seed, "grow.test.data");
  auto* in = tokens.data<std::int32_t>();
  auto* out = targets.data<std::int32_t>();
  for (std::int64_t b = 0; b < batch; ++b) {
    auto x = static_cast<std::int64_t>(s.bits(static_cast<std::uint64_t>(b))[0] % vocab);
    for (std::int64_t i = 0; i <= seq; ++i) {
      if (i < seq) in[b * seq + i] = static_cast<std::int32_t>(x);
      if (i > 0) out[b * seq + i - 1] = static_cast<std::int32_t>(x);
      const auto bits = s.bits(static_cast<std::uint64_t>(1000 + b * (seq + 1) + i));
      x = bits[1] % 8 == 0 ? static_cast<std::int64_t>(bits[2] % vocab) : (5 * x + 3) % vocab;
    }
  }
}

// A few AdamW steps on fresh synthetic batches; returns the last training loss per token.
inline double train_briefly(Backend& backend, const ModelConfig& config, ParameterSet& params,
                            int steps, double lr) {
  Transformer model(backend, config, params);
  AdamWOptions adam;
  adam.weight_decay = 0.0;
  AdamW optimizer(backend, params, adam);
  double loss = 0;
  for (int step = 0; step < steps; ++step) {
    Tensor tokens, targets;
    synthetic_batch(backend, config.vocab_size, 8, 16, 100 + static_cast<std::uint64_t>(step),
                    tokens, targets);
    optimizer.zero_grad();
    const LossSum sum = model.forward_backward(tokens, targets, 1.0f / 128.0f);
    loss = sum.sum / static_cast<double>(sum.tokens);
    optimizer.step(lr, optimizer.grad_norm());
  }
  return loss;
}

inline double validation_loss(Backend& backend, const ModelConfig& config, ParameterSet& params) {
  Transformer model(backend, config, params);
  Tensor tokens, targets;
  synthetic_batch(backend, config.vocab_size, 8, 16, 7, tokens, targets);
  const LossSum sum = model.loss(tokens, targets);
  return sum.sum / static_cast<double>(sum.tokens);
}

}  // namespace metamorph::test

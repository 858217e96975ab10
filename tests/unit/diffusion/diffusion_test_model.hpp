#pragma once
// A small GQA decoder with non-trivial weights for the diffusion tests; its last vocabulary id
// serves as [MASK].
#include <algorithm>
#include <cmath>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/rng/philox.hpp"

namespace metamorph::test {

inline ModelConfig diffusion_test_config(bool tied = false) {
  return model_config_from_json({{"vocab_size", 23},
                                 {"hidden_size", 16},
                                 {"intermediate_size", 24},
                                 {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4},
                                 {"num_key_value_heads", 2},
                                 {"head_dim", 4},
                                 {"rope_theta", 100.0},
                                 {"tie_word_embeddings", tied},
                                 {"max_position_embeddings", 128},
                                 {"initializer_range", 0.3}});
}

inline std::vector<std::int32_t> random_tokens(std::int64_t count, std::int64_t vocab,
                                               std::uint64_t seed) {
  const rng::Stream s(seed, "test.tokens");
  std::vector<std::int32_t> out(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i)
    out[static_cast<std::size_t>(i)] =
        static_cast<std::int32_t>(s.bits(static_cast<std::uint64_t>(i))[0] % vocab);
  return out;
}

inline void zero_grads(ParameterSet& params) {
  for (auto& p : params.all()) std::fill_n(p.grad.data<float>(), p.grad.numel(), 0.0f);
}

inline std::vector<std::vector<float>> grads_of(const ParameterSet& params) {
  std::vector<std::vector<float>> out;
  for (const auto& p : params.all())
    out.emplace_back(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel());
  return out;
}

// max |a - b| / max |b|
inline double normalised_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-30;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

}  // namespace metamorph::test

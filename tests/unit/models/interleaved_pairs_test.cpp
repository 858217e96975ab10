// Transformer::forward_backward_interleaved: two passes interleaved layer by layer. With a fake
// TP group (rank 0 of 2, sums that leave tensors as they are and log when they start and are
// waited for), every sum of a decoder layer but the second pass's last one forward and backward
// has the other pass's work started while it is in flight; the plain schedule has none. Losses
// and every gradient equal two forward_backward calls bit for bit (dense, recompute, MoE).
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"

namespace metamorph {
namespace {

const nlohmann::json kDense = {{"vocab_size", 64},
                               {"hidden_size", 32},
                               {"intermediate_size", 48},
                               {"num_hidden_layers", 3},
                               {"num_attention_heads", 4},
                               {"num_key_value_heads", 2},
                               {"tie_word_embeddings", false}};

nlohmann::json moe_config() {
  nlohmann::json moe = kDense;
  moe["model_type"] = "qwen2_moe";
  moe["num_experts"] = 4;
  moe["num_experts_per_tok"] = 2;
  moe["moe_intermediate_size"] = 16;
  moe["shared_expert_intermediate_size"] = 24;
  return moe;
}

struct Outcome {
  std::vector<double> losses;
  std::vector<std::vector<float>> grads;
  // Started sums during whose flight another sum was started, and those without.
  int covered = 0, uncovered = 0;
};

class InterleavedPairs : public ::testing::Test {
 protected:
  Outcome run(const nlohmann::json& model_json, bool interleaved, bool recompute) {
    const ModelConfig config = model_config_from_json(model_json);
    // Per started sum: how many starts there were when it started and when it was waited for.
    std::vector<std::pair<int, int>> flights;
    int starts = 0;
    TensorParallel tp;
    tp.rank = 0;
    tp.size = 2;
    tp.all_reduce_sum = [](Tensor&) {};
    tp.all_reduce_max = [](Tensor&) {};
    tp.start_all_reduce_sum = [&](Tensor&) -> std::function<void()> {
      const std::size_t id = flights.size();
      flights.emplace_back(++starts, -1);
      return [&, id] { flights[id].second = starts; };
    };
    ParameterSet params = make_parameters(cpu_, config, tp);
    init_parameters(params, config, 3);
    TransformerOptions options;
    options.recompute = recompute;
    Transformer model(cpu_, config, params, options, tp);
    std::array<Transformer::Pass, 2> passes;
    for (int h = 0; h < 2; ++h) {
      passes[h].tokens = cpu_.empty({2, 8}, DType::i32);
      passes[h].targets = cpu_.empty({2, 8}, DType::i32);
      for (int i = 0; i < 16; ++i) {
        passes[h].tokens.data<std::int32_t>()[i] = (i * 37 + 5 + 13 * h) % 64;
        passes[h].targets.data<std::int32_t>()[i] = (i * 11 + 3 + 7 * h) % 64;
      }
    }
    Outcome out;
    const float scale = 1.0f / 32;
    if (interleaved) {
      for (const LossSum& l : model.forward_backward_interleaved(passes, scale))
        out.losses.push_back(l.sum);
    } else {
      for (const auto& pass : passes)
        out.losses.push_back(model.forward_backward(pass.tokens, pass.targets, scale).sum);
    }
    for (const Parameter& p : params.all()) {
      const float* g = p.grad.data<float>();
      out.grads.emplace_back(g, g + p.grad.numel());
    }
    for (const auto& [started, waited] : flights) {
      EXPECT_GE(waited, started) << "a sum never waited for";
      (waited > started ? out.covered : out.uncovered)++;
    }
    return out;
  }

  Arena arena_;
  CpuBackend cpu_{arena_};
};

void expect_bitwise_equal(const Outcome& a, const Outcome& b, const std::string& name) {
  EXPECT_EQ(a.losses, b.losses) << name;
  ASSERT_EQ(a.grads.size(), b.grads.size()) << name;
  for (std::size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].size(), b.grads[i].size()) << name;
    EXPECT_EQ(std::memcmp(a.grads[i].data(), b.grads[i].data(), a.grads[i].size() * sizeof(float)),
              0)
        << name << ": gradient " << i << " differs";
  }
}

TEST_F(InterleavedPairs, EachSumRunsWhileTheOtherPassComputes) {
  const int layers = 3;
  const Outcome paired = run(kDense, true, false);
  // Per pass and layer two sums forward and two backward; each pass's LM-head sum waits behind
  // its own weight-gradient GEMM only, and so do the second pass's last sums forward and backward.
  EXPECT_EQ(paired.covered, 8 * layers - 2);
  EXPECT_EQ(paired.uncovered, 4);
  const Outcome plain = run(kDense, false, false);
  EXPECT_EQ(plain.covered, 0);
}

TEST_F(InterleavedPairs, SameLossesAndGradientsAsTwoForwardBackwards) {
  expect_bitwise_equal(run(kDense, true, false), run(kDense, false, false), "dense");
  expect_bitwise_equal(run(kDense, true, true), run(kDense, false, true), "dense, recompute");
  expect_bitwise_equal(run(moe_config(), true, false), run(moe_config(), false, false), "moe");
}

}  // namespace
}  // namespace metamorph

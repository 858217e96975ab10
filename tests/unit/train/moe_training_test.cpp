// MoE in the training loop: per-layer metrics, the balancing-bias rule after each step, and the
// optimizer leaving non-trainable state alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include <cmath>

#include "models/init.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/train/random_rows.hpp"
#include "runtime/train/trainer.hpp"

namespace metamorph {
namespace {

ModelConfig moe_config(const nlohmann::json& extra) {
  nlohmann::json j = {{"model_type", "deepseek_v3"},
                      {"vocab_size", 32},
                      {"hidden_size", 16},
                      {"intermediate_size", 24},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 2},
                      {"max_position_embeddings", 32},
                      {"initializer_range", 0.3},
                      {"n_routed_experts", 4},
                      {"num_experts_per_tok", 2},
                      {"moe_intermediate_size", 8},
                      {"scoring_func", "sigmoid"},
                      {"router_z_loss_coef", 0.001},
                      {"metamorph", {{"bias_update_rate", 0.01}}}};
  j.merge_patch(extra);
  return model_config_from_json(j);
}

std::vector<MoeLayerMetrics> one_step(const ModelConfig& config, ParameterSet& params,
                                      Backend& cpu) {
  Transformer model(cpu, config, params);
  AdamW optimizer(cpu, params, AdamWOptions{});
  TrainOptions options;
  options.micro_batch = 2;
  options.global_batch = 4;
  RandomRows data(8, config.vocab_size, 5);
  Trainer trainer(cpu, model, optimizer, options, data, nullptr);
  return trainer.step().moe;
}

TEST(MoeTraining, StepReportsEveryMoeLayerAndMovesTheBalancingBias) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = moe_config(nlohmann::json::object());
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 2);
  const auto moe = one_step(config, params, cpu);
  ASSERT_EQ(moe.size(), 2u);
  for (std::size_t l = 0; l < moe.size(); ++l) {
    const MoeLayerMetrics& m = moe[l];
    EXPECT_EQ(m.layer, static_cast<std::int64_t>(l));
    // 32 tokens, 2 slots each; a token uses an expert at most once.
    EXPECT_LE(m.tokens_min, m.tokens_max);
    EXPECT_LE(m.tokens_max, 32.0);
    EXPECT_GE(m.tokens_max, 16.0);  // 64 slots over 4 experts: someone gets at least the mean
    EXPECT_GE(m.tokens_cv, 0.0);
    EXPECT_GT(m.aux_loss, 0.0);
    EXPECT_GT(m.z_loss, 0.0);
    EXPECT_GT(m.router_entropy, 0.0);
    EXPECT_LE(m.router_entropy, std::log(4.0) + 1e-9);
    EXPECT_EQ(m.drop_rate, 0.0);
    // Every routed slot lands on one expert: the per-expert counts sum to the 64 slots, and
    // their extremes are the min and max reported.
    ASSERT_EQ(m.tokens_per_expert.size(), 4u);
    EXPECT_EQ(std::accumulate(m.tokens_per_expert.begin(), m.tokens_per_expert.end(), 0.0), 64.0);
    EXPECT_EQ(*std::min_element(m.tokens_per_expert.begin(), m.tokens_per_expert.end()),
              m.tokens_min);
    EXPECT_EQ(*std::max_element(m.tokens_per_expert.begin(), m.tokens_per_expert.end()),
              m.tokens_max);
    // From zero, one step of the rule leaves every bias at -rate, 0 or +rate; the busiest
    // expert's goes down.
    const Parameter* bias =
        params.find("model.layers." + std::to_string(l) + ".mlp.gate.e_score_correction_bias");
    ASSERT_NE(bias, nullptr);
    EXPECT_FALSE(bias->trainable);
    int moved = 0;
    for (std::int64_t e = 0; e < 4; ++e) {
      const float b = bias->value.data<float>()[e];
      EXPECT_TRUE(b == 0.01f || b == -0.01f || b == 0.0f) << b;
      moved += b != 0.0f;
    }
    if (m.tokens_max > m.tokens_min) {
      EXPECT_GT(moved, 0);
    }
  }
}

TEST(MoeTraining, CapacityDropsAreReported) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = moe_config({{"metamorph", {{"capacity_factor", 0.5}}}});
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 2);
  const auto moe = one_step(config, params, cpu);
  ASSERT_EQ(moe.size(), 2u);
  for (const auto& m : moe) {
    // Capacity per micro-batch: ceil(0.5 * 16 * 2 / 4) = 4 of 32 slots per expert and forward.
    EXPECT_GE(m.drop_rate, 0.5);
    EXPECT_LT(m.drop_rate, 1.0);
  }
}

TEST(MoeTraining, AdamWLeavesNonTrainableParametersAlone) {
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet params;
  for (bool trainable : {true, false}) {
    Parameter p;
    p.name = trainable ? "w" : "state";
    p.global_shape = {3};
    p.offset = {0};
    p.value = cpu.empty({3});
    cpu.fill(p.value, 1.0f);
    p.grad = cpu.empty({3});
    cpu.fill(p.grad, trainable ? 2.0f : 100.0f);
    p.trainable = trainable;
    params.add(std::move(p));
  }
  AdamWOptions o;
  o.clip_norm = 0;
  AdamW optimizer(cpu, params, o);
  EXPECT_DOUBLE_EQ(optimizer.grad_norm(), std::sqrt(12.0));
  optimizer.step(0.1, optimizer.grad_norm());
  EXPECT_NE(params.find("w")->value.data<float>()[0], 1.0f);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(params.find("state")->value.data<float>()[i], 1.0f);
}

}  // namespace
}  // namespace metamorph

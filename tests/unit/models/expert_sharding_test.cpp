// Expert sharding: an EP rank makes only its experts (global names and shapes, so checkpoints
// stay layout-free), expert-TP splits each expert like the dense MLP, and every shard holds the
// values the single-rank model has at the same global indices.
#include <gtest/gtest.h>

#include <set>

#include "models/init.hpp"
#include "planner/cost_model.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {
namespace {

nlohmann::json moe_json() {
  return {{"vocab_size", 16},
          {"hidden_size", 8},
          {"intermediate_size", 8},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 2},
          {"model_type", "qwen2_moe"},
          {"num_experts", 4},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 6},
          {"shared_expert_intermediate_size", 4}};
}

ModelConfig moe_config() {
  return model_config_from_json(moe_json());
}

TEST(ExpertSharding, NamesAndIndices) {
  EXPECT_TRUE(is_expert_parameter("model.layers.1.mlp.experts.3.up_proj.weight"));
  EXPECT_FALSE(is_expert_parameter("model.layers.1.mlp.gate.weight"));
  EXPECT_FALSE(is_expert_parameter("model.layers.1.mlp.shared_expert.up_proj.weight"));
  EXPECT_EQ(expert_index("model.layers.1.mlp.experts.13.down_proj.weight"), 13);
}

TEST(ExpertSharding, EachRankMakesItsExpertsWithTheSingleRankValues) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = moe_config();
  ParameterSet whole = make_parameters(cpu, config);
  init_parameters(whole, config, 7);
  for (int rank = 0; rank < 2; ++rank) {
    ExpertParallel ep;
    ep.rank = rank;
    ep.size = 2;
    ParameterSet mine = make_parameters(cpu, config, {}, {}, ep);
    init_parameters(mine, config, 7);
    std::set<std::int64_t> experts;
    for (const auto& p : mine.all()) {
      if (is_expert_parameter(p.name)) experts.insert(expert_index(p.name));
      const Parameter* w = whole.find(p.name);
      ASSERT_NE(w, nullptr) << p.name;
      EXPECT_EQ(p.global_shape, w->global_shape);
      EXPECT_FALSE(p.is_sharded()) << p.name;
      for (std::int64_t i = 0; i < p.value.numel(); ++i)
        ASSERT_EQ(p.value.data<float>()[i], w->value.data<float>()[i]) << p.name;
    }
    EXPECT_EQ(experts, (std::set<std::int64_t>{2 * rank, 2 * rank + 1}));
    // Dense parameters (router and shared expert included) are all there.
    EXPECT_NE(mine.find("model.layers.0.mlp.gate.weight"), nullptr);
    EXPECT_NE(mine.find("model.layers.0.mlp.shared_expert.up_proj.weight"), nullptr);
    EXPECT_EQ(mine.size(), whole.size() - 2 * 2 * 3);  // 2 layers x 2 experts x 3 matrices
  }
}

TEST(ExpertSharding, ExpertTensorParallelSplitsLikeTheDenseMlp) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = moe_config();
  ParameterSet whole = make_parameters(cpu, config);
  init_parameters(whole, config, 3);
  ExpertParallel ep;
  ep.rank = 1;
  ep.size = 4;
  ep.tp_rank = 1;
  ep.tp_size = 2;  // dense TP stays 1: the shared expert and attention are whole
  ParameterSet mine = make_parameters(cpu, config, {}, {}, ep);
  init_parameters(mine, config, 3);
  const Parameter* up = mine.find("model.layers.1.mlp.experts.1.up_proj.weight");
  const Parameter* down = mine.find("model.layers.1.mlp.experts.1.down_proj.weight");
  ASSERT_NE(up, nullptr);
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(up->local_shape(), (Shape{3, 8}));
  EXPECT_EQ(up->offset, (Shape{3, 0}));
  EXPECT_EQ(down->local_shape(), (Shape{8, 3}));
  EXPECT_EQ(down->offset, (Shape{0, 3}));
  EXPECT_FALSE(mine.find("model.layers.1.mlp.shared_expert.up_proj.weight")->is_sharded());
  const Parameter* w = whole.find(down->name);
  for (std::int64_t r = 0; r < 8; ++r)
    for (std::int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(down->value.data<float>()[r * 3 + c], w->value.data<float>()[r * 6 + 3 + c]);
  EXPECT_EQ(mine.find("model.layers.0.mlp.experts.0.up_proj.weight"), nullptr);
}

TEST(ExpertSharding, ExpertParallelSizeMustDivideTheExperts) {
  Arena arena;
  CpuBackend cpu(arena);
  ExpertParallel ep;
  ep.size = 3;
  EXPECT_THROW(make_parameters(cpu, moe_config(), {}, {}, ep), InputError);
}

// The planner's memory model counts the expert elements a rank holds as the runtime makes them
// (its optimizer state: the same count, over expert-DP under ZeRO-1).
TEST(ExpertSharding, PlannerCountsTheExpertsARankHolds) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = moe_config();
  const planner::ModelShape shape = planner::model_shape_from_json(moe_json());
  for (int ep : {1, 2, 4})
    for (int etp : {1, 2}) {
      ExpertParallel e;
      e.size = ep;
      e.tp_size = etp;
      const ParameterSet mine = make_parameters(cpu, config, {}, {}, e);
      std::int64_t experts = 0;
      for (const auto& p : mine.all())
        if (is_expert_parameter(p.name)) experts += p.value.numel();
      planner::Layout l;
      l.ep = ep;
      l.etp = etp;
      l.tp = etp;
      l.dp = ep;
      EXPECT_EQ(planner::rank_parameters(shape, l, 0).expert, static_cast<double>(experts))
          << "ep " << ep << " etp " << etp;
    }
}

}  // namespace
}  // namespace metamorph

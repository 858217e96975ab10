// The MoE config upcycling builds (shapes, defaults, what the options change) and the requests
// it refuses, each with a message naming the bad option and what would be valid.
#include <gtest/gtest.h>

#include "runtime/core/error.hpp"
#include "runtime/transforms/upcycle_options.hpp"
#include "tests/unit/transforms/grow_test_models.hpp"

namespace metamorph {
namespace {

ModelConfig dense() {
  return test::grow_config({16, 24, 3, 4, 2}, false, false);
}

void expect_error(const ModelConfig& from, const UpcycleOptions& o, const std::string& message) {
  try {
    upcycled_config(from, o);
    ADD_FAILURE() << "expected an InputError containing: " << message;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

TEST(UpcycleConfig, DefaultsFollowTheAquilaMoeRecipe) {
  const UpcycleOptions o;
  EXPECT_EQ(o.experts, 8);
  EXPECT_EQ(o.top_k, 2);
  EXPECT_EQ(o.granularity, 1);
  EXPECT_EQ(o.noise, 0.0);
  EXPECT_EQ(o.drop_fraction, 0.0);
  EXPECT_DOUBLE_EQ(o.router_std, 0.02);
  const ModelConfig to = upcycled_config(dense(), o);
  EXPECT_EQ(to.moe.num_experts, 8);
  EXPECT_EQ(to.moe.top_k, 2);
  EXPECT_EQ(to.moe.expert_intermediate_size, 24);
  EXPECT_EQ(to.moe.shared_expert_intermediate_size, 0);
  EXPECT_EQ(to.moe.scoring, RouterScoring::softmax_then_topk);
  EXPECT_TRUE(to.moe.norm_topk_prob);
  EXPECT_DOUBLE_EQ(to.moe.aux_loss_coef, 0.001);
  EXPECT_DOUBLE_EQ(to.moe.z_loss_coef, 0.01);
  EXPECT_EQ(to.moe.capacity_factor, 0.0);
  for (std::int64_t l = 0; l < 3; ++l) EXPECT_TRUE(to.is_moe_layer(l)) << l;
  // Everything but the MLP is the dense model's.
  EXPECT_EQ(to.hidden_size, 16);
  EXPECT_EQ(to.intermediate_size, 24);
  EXPECT_EQ(to.num_heads, 4);
  EXPECT_EQ(to.vocab_size, 29);
}

TEST(UpcycleConfig, FineGrainedMultipliesExpertsAndTopKAndKeepsActiveParameters) {
  UpcycleOptions o;
  o.experts = 4;
  o.top_k = 2;
  o.granularity = 3;
  const ModelConfig to = upcycled_config(dense(), o);
  EXPECT_EQ(to.moe.num_experts, 12);
  EXPECT_EQ(to.moe.top_k, 6);
  EXPECT_EQ(to.moe.expert_intermediate_size, 8);
  UpcycleOptions coarse = o;
  coarse.granularity = 1;
  const ModelConfig c = upcycled_config(dense(), coarse);
  // The same expert parameters in total and per token; only the routers are wider.
  EXPECT_EQ(active_parameter_count(to), active_parameter_count(c) + 3 * (12 - 4) * 16);
  EXPECT_EQ(parameter_count(to), parameter_count(c) + 3 * (12 - 4) * 16);
  // Active parameters: the dense model plus the routers plus (top_k - 1) more FFNs per layer.
  EXPECT_EQ(active_parameter_count(c), parameter_count(dense()) + 3 * 4 * 16 + 3 * 1 * 3 * 16 * 24);
}

TEST(UpcycleConfig, SharedExpertsAndTrainingSettingsAreWrittenIntoTheConfig) {
  UpcycleOptions o;
  o.experts = 4;
  o.top_k = 1;
  o.shared_experts = 2;
  o.shared_expert_gate = true;
  o.scoring = RouterScoring::sigmoid_bias;
  o.aux_loss_coef = 0.02;
  o.z_loss_coef = 0.0;
  o.capacity_factor = 1.5;
  o.first_dense_layers = 1;
  o.sparse_step = 2;
  const ModelConfig to = upcycled_config(dense(), o);
  EXPECT_EQ(to.moe.shared_expert_intermediate_size, 48);
  EXPECT_TRUE(to.moe.shared_expert_gate);
  EXPECT_EQ(to.moe.scoring, RouterScoring::sigmoid_bias);
  EXPECT_DOUBLE_EQ(to.moe.aux_loss_coef, 0.02);
  EXPECT_DOUBLE_EQ(to.moe.capacity_factor, 1.5);
  EXPECT_FALSE(to.is_moe_layer(0));
  EXPECT_TRUE(to.is_moe_layer(1));
  EXPECT_FALSE(to.is_moe_layer(2));
  // And the config survives its checkpoint's config.json.
  const ModelConfig back = model_config_from_json(model_config_to_json(to));
  EXPECT_EQ(back.moe.num_experts, 4);
  EXPECT_EQ(back.moe.shared_expert_intermediate_size, 48);
  EXPECT_TRUE(back.moe.shared_expert_gate);
  EXPECT_EQ(back.moe.scoring, RouterScoring::sigmoid_bias);
  EXPECT_EQ(back.moe.first_dense_layers, 1);
  EXPECT_EQ(back.moe.sparse_step, 2);
  EXPECT_DOUBLE_EQ(back.moe.z_loss_coef, 0.0);
}

TEST(UpcycleConfig, BadRequestsNameTheOptionAndWhatIsValid) {
  UpcycleOptions o;
  ModelConfig moe = dense();
  moe.moe.num_experts = 4;
  moe.moe.top_k = 2;
  moe.moe.expert_intermediate_size = 24;
  expect_error(moe, o, "the source is already a Mixture-of-Experts model (4 experts)");
  o.experts = 1;
  o.top_k = 1;
  expect_error(dense(), o, "--experts must be at least 2, got 1");
  o = {};
  o.experts = 4;
  o.top_k = 5;
  expect_error(dense(), o, "--top-k must be between 1 and --experts (4), got 5");
  o.top_k = 0;
  expect_error(dense(), o, "--top-k must be between 1 and --experts (4), got 0");
  o = {};
  o.granularity = 5;
  expect_error(dense(), o,
               "--granularity 5 does not divide the dense intermediate_size 24; valid: 1, 2, 3, "
               "4, 6, 8, 12, 24");
  o.granularity = 0;
  expect_error(dense(), o, "--granularity 0 does not divide");
  o = {};
  o.shared_fraction = 1.5;
  expect_error(dense(), o, "--shared-fraction must be in [0, 1], got 1.5");
  o = {};
  o.shared_expert_gate = true;
  expect_error(dense(), o, "--shared-expert-gate needs --shared-experts >= 1");
  o = {};
  o.drop_fraction = 1.0;
  expect_error(dense(), o, "--drop-fraction must be in [0, 1), got 1");
  o = {};
  o.noise = -0.1;
  expect_error(dense(), o, "--noise must be >= 0");
  o = {};
  o.router_std = -1;
  expect_error(dense(), o, "--router-std must be >= 0");
  o = {};
  o.first_dense_layers = 3;
  expect_error(dense(), o, "leave no MoE layer among the 3 layers");
  EXPECT_THROW(parse_router_scoring_option("softmax"), InputError);
  EXPECT_EQ(parse_router_scoring_option("topk_then_softmax"), RouterScoring::topk_then_softmax);
}

}  // namespace
}  // namespace metamorph

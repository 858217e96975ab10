#include <gtest/gtest.h>

#include "models/model_config.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {
namespace {

nlohmann::json base() {
  return {{"vocab_size", 100},      {"hidden_size", 64},        {"intermediate_size", 128},
          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}};
}

std::string error_of(const nlohmann::json& j) {
  try {
    model_config_from_json(j);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, DefaultsAndDerivedSizes) {
  const auto c = model_config_from_json(base());
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.kv_size(), 32);
  EXPECT_FALSE(c.tie_word_embeddings);
  // embed + 2 * (2 norms + q,k,v,o + 3 mlp) + final norm + head
  EXPECT_EQ(
      parameter_count(c),
      100 * 64 + 2 * (2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 128) + 64 + 100 * 64);
  EXPECT_EQ(model_config_from_json(model_config_to_json(c)).hidden_size, 64);
}

TEST(ModelConfig, RejectsBadFieldsNamingThem) {
  auto j = base();
  j["num_attention_heads"] = 5;
  EXPECT_NE(error_of(j).find("num_attention_heads (5) must divide hidden_size (64)"),
            std::string::npos);
  j = base();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(j).find("num_key_value_heads (3) must divide num_attention_heads (4)"),
            std::string::npos);
  j = base();
  j["hidden_size"] = 0;
  EXPECT_NE(error_of(j).find("'hidden_size' must be positive"), std::string::npos);
  j = base();
  j["intermediate_size"] = -4;
  EXPECT_NE(error_of(j).find("'intermediate_size' must be positive"), std::string::npos);
  j = base();
  j.erase("vocab_size");
  EXPECT_NE(error_of(j).find("missing field 'vocab_size'"), std::string::npos);
  j = base();
  j["tie_word_embeddings"] = "yes";
  EXPECT_NE(error_of(j).find("'tie_word_embeddings' must be true or false"), std::string::npos);
}

TEST(ModelConfig, Qwen3TurnsOnQkNorm) {
  auto j = base();
  j["model_type"] = "qwen3";
  EXPECT_TRUE(model_config_from_json(j).qk_norm);
}

TEST(ModelConfig, RopeThetaAtTheTopLevelOrInsideRopeParameters) {
  auto j = base();
  EXPECT_EQ(model_config_from_json(j).rope_theta, 10000.0);
  j["rope_theta"] = 500000.0;
  EXPECT_EQ(model_config_from_json(j).rope_theta, 500000.0);
  // transformers 5 writes {"rope_parameters": {"rope_theta": ..., "rope_type": "default"}}.
  j = base();
  j["rope_parameters"] = {{"rope_theta", 1000000.0}, {"rope_type", "default"}};
  EXPECT_EQ(model_config_from_json(j).rope_theta, 1000000.0);
  j["rope_parameters"]["rope_theta"] = -1.0;
  EXPECT_NE(error_of(j).find("'rope_theta' must be positive"), std::string::npos);
}

TEST(ModelConfig, MoeFieldsUnderEachArchitecturesNames) {
  auto mixtral = base();
  mixtral["model_type"] = "mixtral";
  mixtral["num_local_experts"] = 8;
  mixtral["num_experts_per_tok"] = 2;
  const auto m = model_config_from_json(mixtral).moe;
  EXPECT_EQ(m.num_experts, 8);
  EXPECT_EQ(m.expert_intermediate_size, 128);  // Mixtral experts use intermediate_size
  EXPECT_EQ(m.scoring, RouterScoring::topk_then_softmax);

  auto qwen = base();
  qwen["model_type"] = "qwen2_moe";
  qwen["num_experts"] = 4;
  qwen["num_experts_per_tok"] = 1;
  qwen["moe_intermediate_size"] = 32;
  qwen["shared_expert_intermediate_size"] = 96;
  qwen["decoder_sparse_step"] = 2;
  const auto q = model_config_from_json(qwen);
  EXPECT_TRUE(q.moe.shared_expert_gate);
  EXPECT_FALSE(q.moe.norm_topk_prob);  // the HF Qwen2-MoE default
  EXPECT_FALSE(q.is_moe_layer(0));
  EXPECT_TRUE(q.is_moe_layer(1));
  // layer 0 dense; layer 1: router + 4 experts + shared expert + its gate
  EXPECT_EQ(parameter_count(q), 100 * 64 + 2 * (2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64) +
                                    3 * 64 * 128 + 4 * 64 + 4 * 3 * 64 * 32 + 3 * 64 * 96 + 64 +
                                    64 + 100 * 64);
  const auto round = model_config_from_json(model_config_to_json(q));
  EXPECT_EQ(parameter_count(round), parameter_count(q));
  EXPECT_EQ(round.moe.shared_expert_gate, true);
  EXPECT_EQ(round.moe.norm_topk_prob, false);

  auto deepseek = base();
  deepseek["n_routed_experts"] = 4;
  deepseek["num_experts_per_tok"] = 2;
  deepseek["moe_intermediate_size"] = 16;
  deepseek["n_shared_experts"] = 2;
  deepseek["scoring_func"] = "sigmoid";
  deepseek["first_k_dense_replace"] = 1;
  const auto d = model_config_from_json(deepseek);
  EXPECT_EQ(d.moe.scoring, RouterScoring::sigmoid_bias);
  EXPECT_EQ(d.moe.shared_expert_intermediate_size, 32);
  EXPECT_FALSE(d.moe.shared_expert_gate);
  EXPECT_FALSE(d.is_moe_layer(0));
  bool has_bias = false;
  for (const auto& s : parameter_specs(d))
    if (s.name == "model.layers.1.mlp.gate.e_score_correction_bias") has_bias = !s.trainable;
  EXPECT_TRUE(has_bias);
}

TEST(ModelConfig, RejectsBadMoeConfigs) {
  auto j = base();
  j["num_experts"] = 4;
  j["num_experts_per_tok"] = 5;
  EXPECT_NE(error_of(j).find("num_experts_per_tok (5) must be at most the number of experts (4)"),
            std::string::npos);
  j["num_experts_per_tok"] = 2;
  j["metamorph"] = {{"capacity_factor", 0.0}};
  EXPECT_NE(error_of(j).find("capacity_factor must be > 0"), std::string::npos);
  j["metamorph"] = {{"router_scoring", "argmax"}};
  EXPECT_NE(error_of(j).find("router_scoring 'argmax' is not one of"), std::string::npos);
  j.erase("metamorph");
  j.erase("num_experts_per_tok");
  EXPECT_NE(error_of(j).find("missing field 'num_experts_per_tok'"), std::string::npos);
}

}  // namespace
}  // namespace metamorph

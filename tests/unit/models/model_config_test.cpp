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

}  // namespace
}  // namespace metamorph

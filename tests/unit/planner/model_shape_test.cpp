// Parameter and FLOP counts against published totals and the Megatron-LM closed forms.
#include <gtest/gtest.h>

#include <filesystem>
#include "planner/presets.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::planner {
namespace {

TEST(ModelShape, Llama3_8bHasItsPublishedParameterCount) {
  // meta-llama/Meta-Llama-3-8B: 8,030,261,248 parameters.
  EXPECT_EQ(count_parameters(preset_model("llama3-8b")).total, 8030261248);
}

TEST(ModelShape, Mixtral8x7bTotalAndActiveParameters) {
  const auto counts = count_parameters(preset_model("mixtral-8x7b"));
  // mistralai/Mixtral-8x7B-v0.1: 46,702,792,704 parameters.
  EXPECT_EQ(counts.total, 46702792704);
  // Active: attention, norms, router and 2 of 8 experts per layer, embedding and head.
  const int64_t per_layer = 4096LL * 128 * (64 + 16) + 2 * 4096 + 4096 * 8 + 2 * 3 * 4096LL * 14336;
  EXPECT_EQ(counts.active, 32 * per_layer + 2 * 32000LL * 4096 + 4096);
}

TEST(ModelShape, Gpt3MatchesMegatronClosedForms) {
  const ModelShape m = preset_model("gpt3-175b");
  const int64_t h = 12288, l = 96, V = 51200, s = 2048;
  // 12h^2 + 13h per layer, tied word embedding, learned positions, final LayerNorm.
  EXPECT_EQ(count_parameters(m).total, l * (12 * h * h + 13 * h) + V * h + s * h + 2 * h);
  // Megatron-LM's FLOPs per token: 72 l h^2 (1 + s/(6h) + V/(12 l h)).
  const double megatron = 72.0 * l * h * h * (1 + s / (6.0 * h) + V / (12.0 * l * h));
  EXPECT_NEAR(training_flops_per_token(m, s) / megatron, 1.0, 1e-12);
}

TEST(ModelShape, QwenMoeKeepsDenseAndExpertSizesApart) {
  const ModelShape m = preset_model("qwen-moe-a2.7b");
  EXPECT_EQ(m.moe_ffn, 1408);
  EXPECT_EQ(m.ffn, 5632);
  EXPECT_EQ(m.shared_expert_ffn, 5632);
  EXPECT_EQ(m.num_moe_layers(), 24);
}

TEST(ModelShape, SparseStepAndDenseLayersChooseTheMoeLayers) {
  nlohmann::json config = preset_config("mixtral-8x7b");
  config["decoder_sparse_step"] = 2;
  config["mlp_only_layers"] = {3};
  const ModelShape m = model_shape_from_json(config);
  EXPECT_FALSE(m.layer_is_moe(0));
  EXPECT_TRUE(m.layer_is_moe(1));
  EXPECT_FALSE(m.layer_is_moe(3));
  EXPECT_TRUE(m.layer_is_moe(5));
  EXPECT_EQ(m.num_moe_layers(), 15);
}

TEST(ModelShape, RoundTripsThroughJson) {
  for (const auto& name : preset_names()) {
    const ModelShape m = preset_model(name);
    const ModelShape back = model_shape_from_json(model_shape_to_json(m));
    EXPECT_EQ(count_parameters(back).total, count_parameters(m).total) << name;
    EXPECT_EQ(training_flops_per_token(back, 4096), training_flops_per_token(m, 4096)) << name;
  }
}

void expect_error(const nlohmann::json& config, const std::string& words) {
  try {
    model_shape_from_json(config);
    ADD_FAILURE() << "accepted " << config.dump();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(ModelShape, BadConfigsNameTheField) {
  nlohmann::json config = preset_config("llama3-8b");
  config.erase("hidden_size");
  expect_error(config, "missing field 'hidden_size'");
  config = preset_config("llama3-8b");
  config["num_hidden_layers"] = "many";
  expect_error(config, "'num_hidden_layers' must be a positive integer");
  config = preset_config("llama3-8b");
  config["num_key_value_heads"] = 5;
  expect_error(config, "multiple of num_key_value_heads");
  config = preset_config("mixtral-8x7b");
  config["num_experts_per_tok"] = 9;
  expect_error(config, "exceeds the number of experts");
  expect_error(nlohmann::json::array(), "expected a JSON object");
}

}  // namespace
}  // namespace metamorph::planner

namespace metamorph::planner {
namespace {

// configs/<preset>.json are the presets as files, so `--model configs/x.json` and
// `--preset x` plan the same model.
TEST(ModelShape, ConfigFilesMatchThePresets) {
  for (const auto& name : preset_names()) {
    const auto path = std::filesystem::path(METAMORPH_CONFIGS_DIR) / (name + ".json");
    ASSERT_TRUE(std::filesystem::exists(path)) << path;
    EXPECT_EQ(model_shape_to_json(load_model_shape(path)), model_shape_to_json(preset_model(name)))
        << name;
  }
}

}  // namespace
}  // namespace metamorph::planner

// Bad growth requests fail with an InputError that names the problem.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "runtime/transforms/grow.hpp"
#include "tests/unit/transforms/grow_test_models.hpp"

namespace metamorph {
namespace {

using test::grow_config;

// Runs validate_growth and returns the message it throws ("" when it accepts).
std::string rejection(const ModelConfig& from, const ModelConfig& to, const GrowOptions& o = {}) {
  try {
    validate_growth(from, to, o);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

const ModelConfig kFrom = grow_config({16, 24, 2, 4, 2}, false, false);

TEST(GrowValidation, AcceptsAPlainDoubling) {
  EXPECT_EQ(rejection(kFrom, grow_config({32, 48, 4, 8, 4}, false, false)), "");
}

TEST(GrowValidation, RejectsShrinking) {
  const std::string m = rejection(kFrom, grow_config({8, 48, 4, 8, 4}, false, false));
  EXPECT_NE(m.find("hidden_size 8 is smaller than the source's 16"), std::string::npos) << m;
  EXPECT_NE(
      rejection(kFrom, grow_config({32, 16, 4, 8, 4}, false, false)).find("intermediate_size"),
      std::string::npos);
  EXPECT_NE(
      rejection(kFrom, grow_config({32, 48, 1, 8, 4}, false, false)).find("num_hidden_layers"),
      std::string::npos);
  EXPECT_NE(
      rejection(kFrom, grow_config({32, 48, 2, 2, 2}, false, false)).find("num_attention_heads"),
      std::string::npos);
  EXPECT_NE(
      rejection(kFrom, grow_config({32, 48, 2, 4, 1}, false, false)).find("num_key_value_heads"),
      std::string::npos);
}

TEST(GrowValidation, RejectsKvGroupBreakage) {
  // 4 query heads per KV head cannot become 2 per KV head: a group would be split.
  const ModelConfig mqa = grow_config({16, 24, 2, 4, 1}, false, false);
  const std::string m = rejection(mqa, grow_config({32, 48, 2, 8, 4}, false, false));
  EXPECT_NE(m.find("KV group would be split"), std::string::npos) << m;
  EXPECT_NE(m.find("num_key_value_heads = 2"), std::string::npos) << m;
}

TEST(GrowValidation, RejectsMismatchedHeadsAndArchitecture) {
  ModelConfig other_vocab = grow_config({32, 48, 4, 8, 4}, false, false, false, 50);
  EXPECT_NE(rejection(kFrom, other_vocab).find("vocab_size 50 differs"), std::string::npos);
  ModelConfig head_dim = grow_config({32, 48, 4, 8, 4}, false, false);
  head_dim.head_dim = 8;
  EXPECT_NE(rejection(kFrom, head_dim).find("head_dim 8 differs"), std::string::npos);
  EXPECT_NE(rejection(kFrom, grow_config({32, 48, 4, 8, 4}, false, false, true)).find("qk_norm"),
            std::string::npos);
  EXPECT_NE(rejection(grow_config({16, 24, 2, 4, 2}, false, true),
                      grow_config({32, 48, 4, 8, 4}, false, false))
                .find("attention_bias"),
            std::string::npos);
  EXPECT_NE(
      rejection(kFrom, grow_config({32, 48, 4, 8, 4}, true, false)).find("tie_word_embeddings"),
      std::string::npos);
  ModelConfig theta = grow_config({32, 48, 4, 8, 4}, false, false);
  theta.rope_theta = 10000;
  EXPECT_NE(rejection(kFrom, theta).find("rope_theta"), std::string::npos);
}

TEST(GrowValidation, RejectsBadLayerPositionsAndNoise) {
  const ModelConfig to = grow_config({16, 24, 4, 4, 2}, false, false);
  GrowOptions o;
  o.new_layer_positions = {1};
  EXPECT_NE(rejection(kFrom, to, o).find("1 given, but growing from 2 to 4 layers adds 2"),
            std::string::npos);
  o.new_layer_positions = {1, 4};
  EXPECT_NE(rejection(kFrom, to, o).find("position 4 is outside [0, 4)"), std::string::npos);
  o.new_layer_positions = {2, 1};
  EXPECT_NE(rejection(kFrom, to, o).find("strictly increasing"), std::string::npos);
  o.new_layer_positions = {};
  o.noise = -1;
  EXPECT_NE(rejection(kFrom, to, o).find("noise -1"), std::string::npos);
}

TEST(GrowValidation, RejectsASourceThatDoesNotMatchItsConfig) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig wrong = grow_config({16, 20, 2, 4, 2}, false, false);
  ParameterSet source = make_parameters(cpu, wrong);
  init_parameters(source, wrong, 1);
  try {
    grow_parameters(cpu, kFrom, source, grow_config({32, 48, 4, 8, 4}, false, false), {});
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.gate_proj.weight has shape [20, 16]"),
              std::string::npos)
        << e.what();
  }
}

TEST(GrowValidation, RejectsANonFiniteSource) {
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet source = make_parameters(cpu, kFrom);
  init_parameters(source, kFrom, 1);
  source.find("model.layers.1.mlp.up_proj.weight")->value.data<float>()[5] = std::nanf("");
  try {
    grow_parameters(cpu, kFrom, source, grow_config({32, 48, 4, 8, 4}, false, false), {});
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight holds NaN"),
              std::string::npos)
        << e.what();
  }
}

TEST(GrowValidation, ParsesOptionSpellings) {
  EXPECT_EQ(parse_grow_method("aki"), GrowMethod::aki);
  EXPECT_EQ(parse_depth_placement("stack"), DepthPlacement::stack);
  EXPECT_EQ(parse_depth_init("copy"), DepthInit::copy);
  EXPECT_EQ(parse_hidden_copies("plain"), HiddenCopies::plain);
  EXPECT_EQ(parse_layer_positions("1,3,10"), (std::vector<std::int64_t>{1, 3, 10}));
  EXPECT_THROW(parse_grow_method("net2net"), InputError);
  EXPECT_THROW(parse_layer_positions("1,,2"), InputError);
  EXPECT_THROW(parse_layer_positions("-1"), InputError);
}

}  // namespace
}  // namespace metamorph

// Function preservation: the grown model's logits equal the source model's (the source itself is
// checked against PyTorch in tests/unit/models) for integer-factor width growth, zero-output depth
// growth, and, with scaled hidden copies, any width factor.
#include <gtest/gtest.h>

#include <iostream>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/transforms/grow.hpp"
#include "tests/unit/transforms/grow_test_models.hpp"

namespace metamorph {
namespace {

using test::Shape4;

struct Case {
  const char* label;
  Shape4 from, to;
  bool tied_from, tied_to, bias_from, bias_to, qk_norm;
  GrowMethod method = GrowMethod::fpi;
  DepthPlacement placement = DepthPlacement::interleave;
  std::vector<std::int64_t> positions = {};
  friend void PrintTo(const Case& c, std::ostream* out) { *out << c.label; }
};

class GrowExactness : public ::testing::TestWithParam<Case> {};

TEST_P(GrowExactness, GrownLogitsEqualSourceLogits) {
  const Case c = GetParam();
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = test::grow_config(c.from, c.tied_from, c.bias_from, c.qk_norm);
  const ModelConfig to = test::grow_config(c.to, c.tied_to, c.bias_to, c.qk_norm);
  ParameterSet source = test::random_parameters(cpu, from, 5);
  GrowOptions options;
  options.method = c.method;
  options.placement = c.placement;
  options.new_layer_positions = c.positions;
  options.seed = 17;
  ParameterSet grown = grow_parameters(cpu, from, source, to, options);
  ASSERT_EQ(grown.size(), parameter_specs(to).size());
  for (const auto& p : grown.all()) {
    EXPECT_FALSE(p.adam_m.defined()) << p.name << ": optimizer state must start fresh";
    EXPECT_EQ(cpu.sum_squares(p.grad), 0.0) << p.name;
  }
  const Tensor tokens = probe_tokens(cpu, from.vocab_size, 3, 11, 23);
  EXPECT_LT(logit_deviation(cpu, from, source, to, grown, tokens), 1e-5);
}

constexpr Shape4 kSmall{16, 24, 2, 4, 2};
constexpr Shape4 kDouble{32, 48, 4, 8, 4};

INSTANTIATE_TEST_SUITE_P(
    Cases, GrowExactness,
    ::testing::Values(
        Case{"gqa_untied_2x_interleave", kSmall, kDouble, false, false, false, false, false},
        Case{"mha_tied_2x", {16, 24, 2, 4, 4}, {32, 48, 4, 8, 8}, true, true, false, false, false},
        Case{"gqa_qkv_bias_2x", kSmall, kDouble, false, false, true, true, false},
        Case{"gqa_tied_bias_3x", kSmall, {48, 72, 2, 12, 6}, true, true, true, true, false},
        Case{"stacked_depth",
             kSmall,
             {32, 48, 5, 8, 4},
             false,
             false,
             false,
             false,
             false,
             GrowMethod::fpi,
             DepthPlacement::stack},
        Case{"explicit_positions",
             kSmall,
             {16, 24, 5, 4, 2},
             false,
             false,
             false,
             false,
             false,
             GrowMethod::fpi,
             DepthPlacement::interleave,
             {0, 2, 4}},
        Case{"depth_only_odd",
             {16, 24, 3, 4, 2},
             {16, 24, 4, 4, 2},
             true,
             true,
             false,
             false,
             false},
        Case{"larger_query_groups", kSmall, {32, 48, 2, 8, 2}, false, false, false, false, false},
        Case{"qk_norm_tied", kSmall, kDouble, true, true, false, false, true},
        Case{"tied_to_untied", kSmall, kDouble, true, false, false, false, false},
        Case{"bias_added", kSmall, kDouble, false, false, false, true, false},
        Case{"scaled_copies_non_integer",
             kSmall,
             {24, 40, 3, 6, 3},
             false,
             false,
             true,
             true,
             false},
        Case{"scaled_copies_non_integer_tied",
             kSmall,
             {20, 30, 2, 6, 3},
             true,
             true,
             false,
             false,
             false},
        Case{"zero_method", kSmall, kDouble, true, true, true, true, false, GrowMethod::zero}),
    [](const auto& info) { return std::string(info.param.label); });

// Plain copies of residual dimensions are only exact for integer factors: otherwise the
// RMSNorm mean square changes, and the deviation is measurable (scaled copies remove it).
TEST(GrowHiddenCopies, PlainCopiesDeviateForNonIntegerHiddenAndScaledDoNot) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = test::grow_config({16, 24, 2, 4, 2}, false, false);
  const ModelConfig to = test::grow_config({24, 24, 2, 4, 2}, false, false);
  ParameterSet source = test::random_parameters(cpu, from, 3);
  const Tensor tokens = probe_tokens(cpu, from.vocab_size, 2, 9, 4);
  GrowOptions options;
  options.hidden_copies = HiddenCopies::plain;
  ParameterSet plain = grow_parameters(cpu, from, source, to, options);
  const double plain_deviation = logit_deviation(cpu, from, source, to, plain, tokens);
  EXPECT_GT(plain_deviation, 1e-3);
  options.hidden_copies = HiddenCopies::scaled;
  ParameterSet scaled = grow_parameters(cpu, from, source, to, options);
  const double scaled_deviation = logit_deviation(cpu, from, source, to, scaled, tokens);
  EXPECT_LT(scaled_deviation, 1e-5);
  std::cout << "hidden 16 -> 24: logit deviation plain " << plain_deviation << ", scaled "
            << scaled_deviation << "\n";
  // With an integer factor plain and scaled copies are the same thing.
  const ModelConfig twice = test::grow_config({32, 24, 2, 4, 2}, false, false);
  options.hidden_copies = HiddenCopies::plain;
  ParameterSet plain_twice = grow_parameters(cpu, from, source, twice, options);
  EXPECT_LT(logit_deviation(cpu, from, source, twice, plain_twice, tokens), 1e-5);
}

// The hint's bookkeeping, checked on the tensors themselves: embedding columns are copied,
// consumer input columns divided by the factor, residual producers' rows copied.
TEST(GrowLayout, IntegerFactorCopiesAndDividesAsDocumented) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = test::grow_config({16, 24, 1, 4, 2}, false, false);
  const ModelConfig to = test::grow_config({32, 48, 1, 8, 4}, false, false);
  ParameterSet source = test::random_parameters(cpu, from, 8);
  ParameterSet grown = grow_parameters(cpu, from, source, to, GrowOptions{});
  const auto value = [](const ParameterSet& set, const std::string& name, std::int64_t r,
                        std::int64_t c) {
    const Parameter* p = set.find(name);
    return p->value.data<float>()[r * (p->value.rank() == 2 ? p->value.dim(1) : 1) + c];
  };
  EXPECT_EQ(value(grown, "model.embed_tokens.weight", 3, 21),
            value(source, "model.embed_tokens.weight", 3, 5));
  EXPECT_FLOAT_EQ(value(grown, "model.layers.0.mlp.up_proj.weight", 30, 17),
                  value(source, "model.layers.0.mlp.up_proj.weight", 6, 1) / 2);
  EXPECT_FLOAT_EQ(value(grown, "model.layers.0.mlp.down_proj.weight", 20, 30),
                  value(source, "model.layers.0.mlp.down_proj.weight", 4, 6) / 2);
  // Query head 5 copies head 1 (rows 20..23 from 4..7); KV head 3 copies KV head 1.
  EXPECT_FLOAT_EQ(value(grown, "model.layers.0.self_attn.q_proj.weight", 22, 3),
                  value(source, "model.layers.0.self_attn.q_proj.weight", 6, 3) / 2);
  EXPECT_FLOAT_EQ(value(grown, "model.layers.0.self_attn.k_proj.weight", 13, 16),
                  value(source, "model.layers.0.self_attn.k_proj.weight", 5, 0) / 2);
  EXPECT_FLOAT_EQ(value(grown, "model.layers.0.self_attn.o_proj.weight", 18, 21),
                  value(source, "model.layers.0.self_attn.o_proj.weight", 2, 5) / 2);
  EXPECT_EQ(value(grown, "model.norm.weight", 19, 0), value(source, "model.norm.weight", 3, 0));
}

}  // namespace
}  // namespace metamorph

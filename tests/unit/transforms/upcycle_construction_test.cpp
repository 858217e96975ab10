// How upcycling fills the experts, element by element and FFN by FFN: exact copies, fine-grained
// segments whose scaled sum is the dense FFN, a shared expert that splits the dense output with
// the routed ones, the router's initialisation, and the two ways of breaking the copies'
// symmetry (noise, Drop-Upcycling). The logits-level checks are in upcycle_exactness_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>

#include "models/mlp.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/transforms/upcycle.hpp"
#include "tests/unit/transforms/grow_test_models.hpp"

namespace metamorph {
namespace {

ModelConfig dense_config() {
  return test::grow_config({16, 24, 2, 4, 2}, false, true);
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

const Tensor& value(const ParameterSet& params, const std::string& name) {
  const Parameter* p = params.find(name);
  EXPECT_NE(p, nullptr) << name;
  return p->value;
}

// The SwiGLU FFN whose weights are <prefix>{gate,up,down}_proj.weight, applied to x.
Tensor ffn(Backend& backend, ParameterSet& params, const std::string& prefix, const Tensor& x) {
  SwiGluMlp mlp(backend,
                {params.find(prefix + "gate_proj.weight"), params.find(prefix + "up_proj.weight"),
                 params.find(prefix + "down_proj.weight")});
  Tensor y = mlp.forward(x);
  mlp.release();
  return y;
}

Tensor random_tokens_activations(Backend& backend, std::int64_t tokens, std::int64_t hidden) {
  Tensor x = backend.empty({tokens, hidden});
  const rng::Stream s(9, "upcycle.test.x");
  for (std::int64_t i = 0; i < x.numel(); ++i)
    x.data<float>()[i] = s.normal(static_cast<std::uint64_t>(i));
  return x;
}

// max |a - b| / max |b|
double relative_difference(const Tensor& a, const Tensor& b) {
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < b.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b.data<float>()[i])));
  }
  return diff / scale;
}

// y += s * x
void add_scaled(Tensor& y, const Tensor& x, float s) {
  for (std::int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] += s * x.data<float>()[i];
}

TEST(UpcycleConstruction, ExpertsAreExactCopiesAndEverythingElseIsUnchanged) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  const ParameterSet source = test::random_parameters(cpu, from, 3);
  UpcycleOptions o;
  o.experts = 4;
  o.top_k = 2;
  const ModelConfig to = upcycled_config(from, o);
  const ParameterSet moe = upcycle_parameters(cpu, from, source, o);
  ASSERT_EQ(moe.size(), parameter_specs(to).size());
  for (const auto& p : moe.all()) {
    EXPECT_FALSE(p.adam_m.defined()) << p.name;
    EXPECT_EQ(cpu.sum_squares(p.grad), 0.0) << p.name;
    if (const Parameter* s = source.find(p.name)) {
      EXPECT_TRUE(same(p.value, s->value)) << p.name;
    }
  }
  for (std::int64_t l = 0; l < from.num_layers; ++l) {
    const std::string d = "model.layers." + std::to_string(l) + ".mlp.";
    EXPECT_EQ(moe.find(d + "gate_proj.weight"), nullptr);
    for (std::int64_t e = 0; e < 4; ++e)
      for (const char* w : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"})
        EXPECT_TRUE(same(value(moe, expert_prefix(l, e) + w), value(source, d + w)))
            << l << " " << e << " " << w;
    // Router N(0, 0.02), seeded by the parameter's name.
    const Tensor& router = value(moe, d + "gate.weight");
    const double std = std::sqrt(cpu.sum_squares(router) / static_cast<double>(router.numel()));
    EXPECT_GT(std, 0.012);
    EXPECT_LT(std, 0.03);
  }
  EXPECT_FALSE(same(value(moe, "model.layers.0.mlp.gate.weight"),
                    value(moe, "model.layers.1.mlp.gate.weight")));
  const ParameterSet again = upcycle_parameters(cpu, from, source, o);
  EXPECT_TRUE(same(value(again, "model.layers.1.mlp.gate.weight"),
                   value(moe, "model.layers.1.mlp.gate.weight")));
  o.router_std = 0;
  const ParameterSet zero = upcycle_parameters(cpu, from, source, o);
  EXPECT_EQ(cpu.sum_squares(value(zero, "model.layers.1.mlp.gate.weight")), 0.0);
}

TEST(UpcycleConstruction, FineGrainedSegmentsOfACopySumToTheDenseFfn) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  ParameterSet source = test::random_parameters(cpu, from, 4);
  UpcycleOptions o;
  o.experts = 2;
  o.top_k = 1;
  o.granularity = 3;
  ParameterSet moe = upcycle_parameters(cpu, from, source, o);
  const Tensor x = random_tokens_activations(cpu, 5, from.hidden_size);
  const std::int64_t g = o.granularity;
  for (std::int64_t l = 0; l < from.num_layers; ++l) {
    const Tensor dense = ffn(cpu, source, "model.layers." + std::to_string(l) + ".mlp.", x);
    for (std::int64_t copy = 0; copy < o.experts; ++copy) {
      // All G segments of one copy routed with equal gates 1/G (the balanced case of top-kG
      // renormalised gates over k whole copies): their sum is the dense FFN.
      Tensor sum = cpu.zeros(dense.shape());
      for (std::int64_t s = 0; s < g; ++s)
        add_scaled(sum, ffn(cpu, moe, expert_prefix(l, copy * g + s), x),
                   1.0f / static_cast<float>(g));
      EXPECT_LT(relative_difference(sum, dense), 1e-6) << "layer " << l << " copy " << copy;
      // A single segment alone is not the dense FFN: the identity needs the whole unit.
      EXPECT_GT(relative_difference(ffn(cpu, moe, expert_prefix(l, copy * g), x), dense), 0.1);
    }
  }
  // The segments of a copy share its router row; copies differ.
  const Tensor& router = value(moe, "model.layers.0.mlp.gate.weight");  // [6, 16]
  const float* row = router.data<float>();
  EXPECT_EQ(0, std::memcmp(row, row + 16, 16 * 4));
  EXPECT_EQ(0, std::memcmp(row, row + 32, 16 * 4));
  EXPECT_NE(0, std::memcmp(row, row + 48, 16 * 4));
  o.independent_segment_routers = true;
  const ParameterSet independent = upcycle_parameters(cpu, from, source, o);
  row = value(independent, "model.layers.0.mlp.gate.weight").data<float>();
  EXPECT_NE(0, std::memcmp(row, row + 16, 16 * 4));
  // Segment s of every copy is the same slice: rows [s f/G, (s+1) f/G) of gate and up.
  const Tensor& gate = value(source, "model.layers.1.mlp.gate_proj.weight");
  const Tensor& seg = value(moe, expert_prefix(1, 4) + "gate_proj.weight");  // copy 1, segment 1
  EXPECT_EQ(0, std::memcmp(seg.raw(), gate.data<float>() + 8 * 16, seg.bytes()));
}

TEST(UpcycleConstruction, SharedExpertAndRoutedExpertsSplitTheDenseOutput) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  ParameterSet source = test::random_parameters(cpu, from, 5);
  const Tensor x = random_tokens_activations(cpu, 4, from.hidden_size);
  const Tensor dense = ffn(cpu, source, "model.layers.0.mlp.", x);
  for (const double fraction : {0.0, 0.25, 0.5, 1.0})
    for (const std::int64_t copies : {1, 2})
      for (const bool gated : {false, true}) {
        UpcycleOptions o;
        o.experts = 3;
        o.top_k = 2;
        o.shared_experts = copies;
        o.shared_fraction = fraction;
        o.shared_expert_gate = gated;
        ParameterSet moe = upcycle_parameters(cpu, from, source, o);
        EXPECT_EQ(value(moe, "model.layers.0.mlp.shared_expert.up_proj.weight").dim(0),
                  24 * copies);
        // Gates summing to 1 over the routed copies make them one dense-FFN-sized expert.
        Tensor sum = ffn(cpu, moe, expert_prefix(0, 2), x);
        Tensor shared = ffn(cpu, moe, "model.layers.0.mlp.shared_expert.", x);
        if (gated) {
          // sigmoid(x . 0) = 1/2 for every token.
          EXPECT_EQ(cpu.sum_squares(value(moe, "model.layers.0.mlp.shared_expert_gate.weight")),
                    0.0);
          add_scaled(sum, shared, 0.5f);
        } else {
          add_scaled(sum, shared, 1.0f);
        }
        EXPECT_LT(relative_difference(sum, dense), 1e-6)
            << "fraction " << fraction << " copies " << copies << " gated " << gated;
      }
}

TEST(UpcycleConstruction, NoiseIsSeededRelativeAndOnlyOnRoutedExperts) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  const ParameterSet source = test::random_parameters(cpu, from, 6);
  UpcycleOptions o;
  o.experts = 4;
  o.shared_experts = 1;
  o.seed = 11;
  const ParameterSet exact = upcycle_parameters(cpu, from, source, o);
  o.noise = 0.05;
  const ParameterSet noisy = upcycle_parameters(cpu, from, source, o);
  for (const auto& p : noisy.all()) {
    const Tensor& e = value(exact, p.name);
    if (p.name.find(".experts.") == std::string::npos) {
      EXPECT_TRUE(same(p.value, e)) << p.name << ": noise only on routed experts";
      continue;
    }
    Tensor diff = cpu.empty(e.shape());
    for (std::int64_t i = 0; i < e.numel(); ++i)
      diff.data<float>()[i] = p.value.data<float>()[i] - e.data<float>()[i];
    const double relative = std::sqrt(cpu.sum_squares(diff) / cpu.sum_squares(e));
    EXPECT_GT(relative, 0.03) << p.name;
    EXPECT_LT(relative, 0.07) << p.name;
  }
  EXPECT_FALSE(same(value(noisy, expert_prefix(0, 0) + "up_proj.weight"),
                    value(noisy, expert_prefix(0, 1) + "up_proj.weight")));
  EXPECT_TRUE(same(
      value(upcycle_parameters(cpu, from, source, o), expert_prefix(1, 2) + "down_proj.weight"),
      value(noisy, expert_prefix(1, 2) + "down_proj.weight")));
  o.seed = 12;
  EXPECT_FALSE(same(
      value(upcycle_parameters(cpu, from, source, o), expert_prefix(1, 2) + "down_proj.weight"),
      value(noisy, expert_prefix(1, 2) + "down_proj.weight")));
}

TEST(UpcycleConstruction, DropUpcyclingRedrawsAFractionOfEachExpertsUnits) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  const ParameterSet source = test::random_parameters(cpu, from, 7);
  UpcycleOptions o;
  o.experts = 4;
  o.drop_fraction = 0.25;  // 6 of 24 units
  const ParameterSet moe = upcycle_parameters(cpu, from, source, o);
  const std::int64_t h = 16, f = 24;
  const Tensor& gate = value(source, "model.layers.1.mlp.gate_proj.weight");
  const Tensor& up = value(source, "model.layers.1.mlp.up_proj.weight");
  const Tensor& down = value(source, "model.layers.1.mlp.down_proj.weight");
  std::set<std::set<std::int64_t>> dropped_sets;
  for (std::int64_t e = 0; e < 4; ++e) {
    const std::string ep = expert_prefix(1, e);
    const float* eg = value(moe, ep + "gate_proj.weight").data<float>();
    const float* eu = value(moe, ep + "up_proj.weight").data<float>();
    const float* ed = value(moe, ep + "down_proj.weight").data<float>();
    std::set<std::int64_t> dropped;
    for (std::int64_t u = 0; u < f; ++u) {
      const bool gate_kept = std::memcmp(eg + u * h, gate.data<float>() + u * h, h * 4) == 0;
      const bool up_kept = std::memcmp(eu + u * h, up.data<float>() + u * h, h * 4) == 0;
      bool down_kept = true;
      for (std::int64_t r = 0; r < h; ++r)
        down_kept = down_kept && ed[r * f + u] == down.data<float>()[r * f + u];
      // A unit is kept or re-drawn whole: its gate row, up row and down column together.
      EXPECT_EQ(gate_kept, up_kept) << e << " " << u;
      EXPECT_EQ(gate_kept, down_kept) << e << " " << u;
      if (!gate_kept) dropped.insert(u);
    }
    EXPECT_EQ(dropped.size(), 6u) << "expert " << e;
    dropped_sets.insert(dropped);
  }
  EXPECT_EQ(dropped_sets.size(), 4u) << "every expert re-draws its own units";
}

TEST(UpcycleConstruction, LayersThatStayDenseKeepTheirFfnAndSigmoidScoringGetsAZeroBias) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  const ParameterSet source = test::random_parameters(cpu, from, 8);
  UpcycleOptions o;
  o.experts = 2;
  o.top_k = 1;
  o.first_dense_layers = 1;
  o.scoring = RouterScoring::sigmoid_bias;
  const ParameterSet moe = upcycle_parameters(cpu, from, source, o);
  EXPECT_TRUE(same(value(moe, "model.layers.0.mlp.down_proj.weight"),
                   value(source, "model.layers.0.mlp.down_proj.weight")));
  EXPECT_EQ(moe.find("model.layers.0.mlp.gate.weight"), nullptr);
  EXPECT_EQ(cpu.sum_squares(value(moe, "model.layers.1.mlp.gate.e_score_correction_bias")), 0.0);
}

}  // namespace
}  // namespace metamorph

// Finite differences for one decoder block's backward (input and every weight), and full
// recompute giving the same gradients as keeping activations.
#include <gtest/gtest.h>

#include <cmath>

#include "models/decoder_layer.hpp"
#include "models/init.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/rng/philox.hpp"

namespace metamorph {
namespace {

struct Block {
  ModelConfig config;
  ParameterSet params;
  DecoderLayerWeights weights;
};

Block make_block(CpuBackend& cpu, bool bias, bool qk_norm) {
  Block b;
  b.config = model_config_from_json({{"vocab_size", 8},
                                     {"hidden_size", 12},
                                     {"intermediate_size", 20},
                                     {"num_hidden_layers", 1},
                                     {"num_attention_heads", 4},
                                     {"num_key_value_heads", 2},
                                     {"head_dim", 4},
                                     {"attention_bias", bias},
                                     {"initializer_range", 0.3},
                                     {"metamorph", {{"qk_norm", qk_norm}}}});
  b.params = make_parameters(cpu, b.config);
  init_parameters(b.params, b.config, 5);
  const rng::Stream jitter(6, "fd.jitter");
  std::uint64_t counter = 0;
  for (auto& p : b.params.all())
    for (std::int64_t i = 0; i < p.value.numel(); ++i)
      p.value.data<float>()[i] += 0.2f * jitter.normal(counter++);
  auto* ps = &b.params;
  const std::string l = "model.layers.0.";
  b.weights.input_norm = ps->find(l + "input_layernorm.weight");
  b.weights.post_attention_norm = ps->find(l + "post_attention_layernorm.weight");
  b.weights.attention = {
      ps->find(l + "self_attn.q_proj.weight"), ps->find(l + "self_attn.k_proj.weight"),
      ps->find(l + "self_attn.v_proj.weight"), ps->find(l + "self_attn.o_proj.weight"),
      ps->find(l + "self_attn.q_proj.bias"),   ps->find(l + "self_attn.k_proj.bias"),
      ps->find(l + "self_attn.v_proj.bias"),   ps->find(l + "self_attn.q_norm.weight"),
      ps->find(l + "self_attn.k_norm.weight")};
  b.weights.mlp = {ps->find(l + "mlp.gate_proj.weight"), ps->find(l + "mlp.up_proj.weight"),
                   ps->find(l + "mlp.down_proj.weight")};
  return b;
}

// objective = sum(layer(x) * r), accumulated in double
double objective(DecoderLayer& layer, CpuBackend& cpu, const Tensor& x, const Tensor& r,
                 const Tensor& positions) {
  Tensor y = layer.forward(x, 2, positions, AttentionMask{});
  layer.release();
  double sum = 0;
  for (std::int64_t i = 0; i < y.numel(); ++i)
    sum += static_cast<double>(y.data<float>()[i]) * r.data<float>()[i];
  (void)cpu;
  return sum;
}

class DecoderLayerGradients : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(DecoderLayerGradients, MatchCentralDifferences) {
  const auto [bias, qk_norm] = GetParam();
  Arena arena;
  CpuBackend cpu(arena);
  Block b = make_block(cpu, bias, qk_norm);
  DecoderLayer layer(cpu, b.config, b.weights, false);
  const std::int64_t batch = 2, seq = 5, tokens = batch * seq, h = b.config.hidden_size;
  Tensor x = cpu.empty({tokens, h}), r = cpu.empty({tokens, h});
  Tensor positions = cpu.empty({seq}, DType::i32);
  for (std::int64_t i = 0; i < seq; ++i)
    positions.data<std::int32_t>()[i] = static_cast<std::int32_t>(i);
  const rng::Stream s(8, "fd.inputs");
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    x.data<float>()[i] = s.normal(static_cast<std::uint64_t>(i));
    r.data<float>()[i] = s.normal(static_cast<std::uint64_t>(i + 100000));
  }
  Tensor y = layer.forward(x, batch, positions, AttentionMask{});
  (void)y;
  const Tensor dx = layer.backward(r);

  const float eps = 1e-2f;
  auto check = [&](float* value, float analytic, const std::string& what) {
    const float saved = *value;
    *value = saved + eps;
    const double plus = objective(layer, cpu, x, r, positions);
    *value = saved - eps;
    const double minus = objective(layer, cpu, x, r, positions);
    *value = saved;
    const double numeric = (plus - minus) / (2.0 * eps);
    EXPECT_NEAR(analytic, numeric, 2e-2 * std::max(1.0, std::abs(numeric))) << what;
  };
  for (std::int64_t i = 0; i < x.numel(); i += 7)
    check(x.data<float>() + i, dx.data<float>()[i], "dx[" + std::to_string(i) + "]");
  for (auto& p : b.params.all()) {
    if (p.name.find("layers.0.") == std::string::npos) continue;
    const std::int64_t stride = std::max<std::int64_t>(1, p.value.numel() / 6);
    for (std::int64_t i = 0; i < p.value.numel(); i += stride)
      check(p.value.data<float>() + i, p.grad.data<float>()[i],
            p.name + "[" + std::to_string(i) + "]");
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, DecoderLayerGradients,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

TEST(DecoderLayer, RecomputeGivesIdenticalGradients) {
  std::vector<std::vector<float>> grads(2);
  for (int recompute = 0; recompute < 2; ++recompute) {
    Arena arena;
    CpuBackend cpu(arena);
    Block b = make_block(cpu, true, true);
    DecoderLayer layer(cpu, b.config, b.weights, recompute == 1);
    Tensor x = cpu.empty({6, 12}), r = cpu.empty({6, 12});
    Tensor positions = cpu.empty({3}, DType::i32);
    for (int i = 0; i < 3; ++i) positions.data<std::int32_t>()[i] = i;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      x.data<float>()[i] = 0.1f * static_cast<float>(i % 13) - 0.5f;
      r.data<float>()[i] = 0.05f * static_cast<float>(i % 7) - 0.2f;
    }
    layer.forward(x, 2, positions, AttentionMask{});
    const Tensor dx = layer.backward(r);
    auto& g = grads[static_cast<std::size_t>(recompute)];
    g.assign(dx.data<float>(), dx.data<float>() + dx.numel());
    for (const auto& p : b.params.all())
      g.insert(g.end(), p.grad.data<float>(), p.grad.data<float>() + p.grad.numel());
  }
  EXPECT_EQ(grads[0], grads[1]);
}

}  // namespace
}  // namespace metamorph

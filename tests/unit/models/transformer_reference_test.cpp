// The dense decoder against an independent PyTorch implementation (tests/reference/
// model_reference.py, float64): logits, loss and every parameter gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/rng/philox.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

using test::TempDir;

struct Case {
  const char* label;
  std::int64_t heads, kv_heads;
  bool tied, bias, qk_norm;
  friend void PrintTo(const Case& c, std::ostream* out) { *out << c.label; }
};

std::vector<float> read_floats(const std::filesystem::path& path) {
  const std::string bytes = test::read_file(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

void append_raw(std::ofstream& out, const Tensor& t) {
  out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.bytes()));
}

// max |a - b| / max |b|: one number per tensor, robust to tiny reference values.
double normalised_error(const float* a, const float* b, std::int64_t n) {
  double diff = 0, scale = 1e-12;
  for (std::int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

class TransformerReference : public ::testing::TestWithParam<Case> {};

TEST_P(TransformerReference, LogitsLossAndGradientsMatchPyTorch) {
  const Case c = GetParam();
  ModelConfig config = model_config_from_json({{"vocab_size", 37},
                                               {"hidden_size", 24},
                                               {"intermediate_size", 40},
                                               {"num_hidden_layers", 2},
                                               {"num_attention_heads", c.heads},
                                               {"num_key_value_heads", c.kv_heads},
                                               {"head_dim", 8},
                                               {"rope_theta", 500.0},
                                               {"rms_norm_eps", 1e-5},
                                               {"tie_word_embeddings", c.tied},
                                               {"attention_bias", c.bias},
                                               {"initializer_range", 0.2},
                                               {"metamorph", {{"qk_norm", c.qk_norm}}}});
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 7);
  // Non-trivial norm weights and biases, so their gradients are exercised.
  const rng::Stream jitter(3, "test.jitter");
  std::uint64_t counter = 0;
  for (auto& p : params.all()) {
    if (p.weight_decay) continue;
    float* v = p.value.data<float>();
    for (std::int64_t i = 0; i < p.value.numel(); ++i) v[i] += 0.3f * jitter.normal(counter++);
  }
  const std::int64_t batch = 2, seq = 9;
  Tensor tokens = cpu.empty({batch, seq}, DType::i32),
         targets = cpu.empty({batch, seq}, DType::i32);
  const rng::Stream data(11, "test.tokens");
  for (std::int64_t i = 0; i < batch * seq; ++i) {
    tokens.data<std::int32_t>()[i] =
        static_cast<std::int32_t>(data.bits(static_cast<std::uint64_t>(i))[0] % 37);
    targets.data<std::int32_t>()[i] =
        static_cast<std::int32_t>(data.bits(static_cast<std::uint64_t>(i))[1] % 37);
  }
  targets.data<std::int32_t>()[4] = -1;  // an ignored position

  TempDir dir;
  test::write_file(dir / "config.json", model_config_to_json(config).dump());
  nlohmann::json specs = nlohmann::json::array();
  {
    std::ofstream out(dir / "params.bin", std::ios::binary);
    for (const auto& p : params.all()) {
      specs.push_back({p.name, p.global_shape});
      append_raw(out, p.value);
    }
    std::ofstream t(dir / "tokens.bin", std::ios::binary);
    append_raw(t, tokens);
    std::ofstream g(dir / "targets.bin", std::ios::binary);
    append_raw(g, targets);
  }
  test::write_file(dir / "params.json", specs.dump());
  test::write_file(dir / "shape.json", nlohmann::json({batch, seq}).dump());
  const float scale = 1.0f / 17.0f;
  test::write_file(dir / "scale.txt", "0.058823529411764705");

  const auto ref = test::run_shell(
      test::python() + " " + (test::source_dir() / "tests/reference/model_reference.py").string() +
      " " + dir.path().string());
  ASSERT_EQ(ref.exit_code, 0) << ref.out;

  Transformer model(cpu, config, params);
  const Tensor logits = model.logits(tokens);
  const auto ref_logits = read_floats(dir / "logits.bin");
  ASSERT_EQ(static_cast<std::int64_t>(ref_logits.size()), logits.numel());
  EXPECT_LT(normalised_error(logits.data<float>(), ref_logits.data(), logits.numel()), 1e-4)
      << "logits";

  const LossSum loss = model.forward_backward(tokens, targets, scale);
  std::ifstream loss_file(dir / "loss.txt");
  double ref_loss = 0;
  std::int64_t ref_tokens = 0;
  loss_file >> ref_loss >> ref_tokens;
  EXPECT_EQ(loss.tokens, ref_tokens);
  EXPECT_NEAR(loss.sum, ref_loss, 1e-4 * std::abs(ref_loss));

  const auto ref_grads = read_floats(dir / "grads.bin");
  std::size_t offset = 0;
  for (const auto& p : params.all()) {
    ASSERT_LE(offset + static_cast<std::size_t>(p.grad.numel()), ref_grads.size());
    EXPECT_LT(normalised_error(p.grad.data<float>(), ref_grads.data() + offset, p.grad.numel()),
              1e-4)
        << p.name;
    offset += static_cast<std::size_t>(p.grad.numel());
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, TransformerReference,
                         ::testing::Values(Case{"gqa_untied", 4, 2, false, false, false},
                                           Case{"mha_tied", 3, 3, true, false, false},
                                           Case{"mqa_bias", 4, 1, false, true, false},
                                           Case{"gqa_qknorm_tied", 4, 2, true, false, true}),
                         [](const auto& info) { return std::string(info.param.label); });

}  // namespace
}  // namespace metamorph

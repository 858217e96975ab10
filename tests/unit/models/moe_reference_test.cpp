// The MoE block and an MoE decoder against independent PyTorch modules (tests/reference/
// moe_reference.py, float64: Mixtral, Qwen2-MoE and sigmoid-bias routing): outputs, aux and z
// losses, dropped slots and every gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/init.hpp"
#include "models/moe_block.hpp"
#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/rng/philox.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

using test::TempDir;

struct Case {
  const char* label;
  const char* model_type;  // mixtral | qwen2_moe | deepseek_v3 (sigmoid scoring)
  std::int64_t top_k;
  std::int64_t shared;  // shared expert size, 0: none
  bool shared_gate;
  double capacity_factor;  // 0: dropless
  bool norm_topk_prob;
  friend void PrintTo(const Case& c, std::ostream* out) { *out << c.label; }
};

nlohmann::json moe_json(const Case& c, std::int64_t layers) {
  nlohmann::json j = {{"model_type", c.model_type},
                      {"vocab_size", 29},
                      {"hidden_size", 16},
                      {"intermediate_size", 20},
                      {"num_hidden_layers", layers},
                      {"num_attention_heads", 2},
                      {"num_key_value_heads", 1},
                      {"head_dim", 8},
                      {"rms_norm_eps", 1e-5},
                      {"initializer_range", 0.3},
                      {"num_experts", 4},
                      {"num_experts_per_tok", c.top_k},
                      {"moe_intermediate_size", 12},
                      {"norm_topk_prob", c.norm_topk_prob},
                      {"router_aux_loss_coef", 0.05},
                      {"router_z_loss_coef", 0.01},
                      {"metamorph", {{"shared_expert_gate", c.shared_gate}}}};
  if (c.shared > 0) j["shared_expert_intermediate_size"] = c.shared;
  if (std::string(c.model_type) == "deepseek_v3") j["scoring_func"] = "sigmoid";
  if (c.capacity_factor > 0) j["metamorph"]["capacity_factor"] = c.capacity_factor;
  return j;
}

std::vector<float> read_floats(const std::filesystem::path& path) {
  const std::string bytes = test::read_file(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

void append_raw(std::ofstream& out, const Tensor& t) {
  out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.bytes()));
}

double normalised_error(const float* a, const float* b, std::int64_t n) {
  double diff = 0, scale = 1e-12;
  for (std::int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

void fill_normal(Tensor& t, const char* purpose, double std) {
  const rng::Stream s(5, purpose);
  float* d = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    d[i] = static_cast<float>(std * s.normal(static_cast<std::uint64_t>(i)));
}

// The balancing bias starts at zero; give it values that change some top-k choices.
void jitter_bias(ParameterSet& params) {
  for (auto& p : params.all())
    if (p.name.ends_with("e_score_correction_bias")) fill_normal(p.value, "test.bias", 0.1);
}

void write_params(const std::filesystem::path& dir, const ParameterSet& params,
                  const std::string& must_contain) {
  nlohmann::json specs = nlohmann::json::array();
  std::ofstream out(dir / "params.bin", std::ios::binary);
  for (const auto& p : params.all()) {
    if (p.name.find(must_contain) == std::string::npos) continue;
    specs.push_back({p.name, p.global_shape});
    append_raw(out, p.value);
  }
  test::write_file(dir / "params.json", specs.dump());
}

void expect_grads(const ParameterSet& params, const std::vector<float>& ref,
                  const std::string& must_contain) {
  std::size_t offset = 0;
  for (const auto& p : params.all()) {
    if (p.name.find(must_contain) == std::string::npos) continue;
    ASSERT_LE(offset + static_cast<std::size_t>(p.grad.numel()), ref.size());
    EXPECT_LT(normalised_error(p.grad.data<float>(), ref.data() + offset, p.grad.numel()), 1e-4)
        << p.name;
    offset += static_cast<std::size_t>(p.grad.numel());
  }
  EXPECT_EQ(offset, ref.size());
}

std::string reference(const char* mode, const TempDir& dir) {
  return test::python() + " " + (test::source_dir() / "tests/reference/moe_reference.py").string() +
         " " + mode + " " + dir.path().string();
}

class MoeLayerReference : public ::testing::TestWithParam<Case> {};

TEST_P(MoeLayerReference, OutputLossesAndGradientsMatchPyTorch) {
  const Case c = GetParam();
  const ModelConfig config = model_config_from_json(moe_json(c, 1));
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 7);
  jitter_bias(params);
  const std::int64_t tokens = 24, h = config.hidden_size;
  Tensor x = cpu.empty({tokens, h}), dy = cpu.empty({tokens, h});
  fill_normal(x, "test.x", 1.0);
  fill_normal(dy, "test.dy", 1.0);
  const float scale = 1.7f;

  TempDir dir;
  test::write_file(dir / "config.json", model_config_to_json(config).dump());
  test::write_file(dir / "layer.txt", "0");
  test::write_file(dir / "scale.txt", "1.7000000476837158");
  write_params(dir.path(), params, ".mlp.");
  {
    std::ofstream xs(dir / "x.bin", std::ios::binary), ds(dir / "dy.bin", std::ios::binary);
    append_raw(xs, x);
    append_raw(ds, dy);
  }
  const auto ref = test::run_shell(reference("layer", dir));
  ASSERT_EQ(ref.exit_code, 0) << ref.out;

  LocalExpertExchange exchange(config.moe.num_experts);
  MoeBlock block(cpu, config.moe, moe_weights(params, config, 0, exchange), exchange);
  const Tensor y = block.forward(x);
  const auto ref_y = read_floats(dir / "y.bin");
  ASSERT_EQ(static_cast<std::int64_t>(ref_y.size()), y.numel());
  EXPECT_LT(normalised_error(y.data<float>(), ref_y.data(), y.numel()), 1e-4) << "y";
  double aux = 0, z = 0;
  std::int64_t dropped = 0;
  std::ifstream(dir / "losses.txt") >> aux >> z >> dropped;
  EXPECT_NEAR(block.last_aux_loss(), aux, 1e-5 * std::abs(aux));
  EXPECT_NEAR(block.last_z_loss(), z, 1e-5 * std::abs(z));
  EXPECT_EQ(block.stats().dropped, dropped);
  if (c.capacity_factor > 0) {
    EXPECT_GT(dropped, 0) << "the capacity case must drop something";
  }

  const Tensor dx = block.backward(dy, scale);
  const auto ref_dx = read_floats(dir / "dx.bin");
  EXPECT_LT(normalised_error(dx.data<float>(), ref_dx.data(), dx.numel()), 1e-4) << "dx";
  expect_grads(params, read_floats(dir / "grads.bin"), ".mlp.");
}

const Case kCases[] = {
    {"mixtral_top2", "mixtral", 2, 0, false, 0.0, true},
    {"mixtral_top1", "mixtral", 1, 0, false, 0.0, true},
    {"mixtral_top2_capacity", "mixtral", 2, 0, false, 0.6, true},
    {"qwen_top2_shared_gate", "qwen2_moe", 2, 10, true, 0.0, false},
    {"qwen_top2_norm_shared", "qwen2_moe", 2, 10, false, 0.0, true},
    {"qwen_top1_shared_gate_capacity", "qwen2_moe", 1, 10, true, 0.8, false},
    {"sigmoid_top2", "deepseek_v3", 2, 0, false, 0.0, true},
    {"sigmoid_top2_unnormalised_shared", "deepseek_v3", 2, 6, false, 0.0, false},
};

INSTANTIATE_TEST_SUITE_P(Configs, MoeLayerReference, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.label); });

class MoeModelReference : public ::testing::TestWithParam<Case> {};

TEST_P(MoeModelReference, LogitsLossesAndGradientsMatchPyTorch) {
  const Case c = GetParam();
  nlohmann::json j = moe_json(c, 3);
  j["decoder_sparse_step"] = 1;
  j["first_k_dense_replace"] = 1;  // layer 0 dense, layers 1 and 2 MoE
  const ModelConfig config = model_config_from_json(j);
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 7);
  jitter_bias(params);
  const std::int64_t batch = 2, seq = 7;
  Tensor tokens = cpu.empty({batch, seq}, DType::i32),
         targets = cpu.empty({batch, seq}, DType::i32);
  const rng::Stream data(11, "test.tokens");
  for (std::int64_t i = 0; i < batch * seq; ++i) {
    tokens.data<std::int32_t>()[i] =
        static_cast<std::int32_t>(data.bits(static_cast<std::uint64_t>(i))[0] % 29);
    targets.data<std::int32_t>()[i] =
        static_cast<std::int32_t>(data.bits(static_cast<std::uint64_t>(i))[1] % 29);
  }
  targets.data<std::int32_t>()[3] = -1;

  TempDir dir;
  test::write_file(dir / "config.json", model_config_to_json(config).dump());
  write_params(dir.path(), params, "");
  {
    std::ofstream t(dir / "tokens.bin", std::ios::binary), g(dir / "targets.bin", std::ios::binary);
    append_raw(t, tokens);
    append_raw(g, targets);
  }
  test::write_file(dir / "shape.json", nlohmann::json({batch, seq}).dump());
  const float scale = 1.0f / 13.0f;
  test::write_file(dir / "scale.txt", "0.076923076923076927");
  const auto ref = test::run_shell(reference("model", dir));
  ASSERT_EQ(ref.exit_code, 0) << ref.out;

  Transformer model(cpu, config, params);
  ASSERT_EQ(model.moe_blocks().size(), 2u);
  const Tensor logits = model.logits(tokens);
  const auto ref_logits = read_floats(dir / "logits.bin");
  ASSERT_EQ(static_cast<std::int64_t>(ref_logits.size()), logits.numel());
  EXPECT_LT(normalised_error(logits.data<float>(), ref_logits.data(), logits.numel()), 1e-4);

  const LossSum loss = model.forward_backward(tokens, targets, scale);
  double ref_loss = 0;
  std::int64_t ref_tokens = 0;
  std::ifstream(dir / "loss.txt") >> ref_loss >> ref_tokens;
  EXPECT_EQ(loss.tokens, ref_tokens);
  EXPECT_NEAR(loss.sum, ref_loss, 1e-4 * std::abs(ref_loss));
  std::ifstream losses(dir / "losses.txt");
  for (auto& [layer, block] : model.moe_blocks()) {
    double aux = 0, z = 0;
    losses >> aux >> z;
    EXPECT_NEAR(block->last_aux_loss(), aux, 1e-5 * std::abs(aux)) << "layer " << layer;
    EXPECT_NEAR(block->last_z_loss(), z, 1e-5 * std::abs(z)) << "layer " << layer;
  }
  expect_grads(params, read_floats(dir / "grads.bin"), "");
}

const Case kModelCases[] = {
    {"mixtral_top2", "mixtral", 2, 0, false, 0.0, true},
    {"mixtral_top1_capacity", "mixtral", 1, 0, false, 0.7, true},
    {"qwen_top2_shared_gate", "qwen2_moe", 2, 10, true, 0.0, false},
    {"qwen_top1_shared_capacity", "qwen2_moe", 1, 10, true, 0.7, true},
    {"sigmoid_top2", "deepseek_v3", 2, 0, false, 0.0, true},
};

INSTANTIATE_TEST_SUITE_P(Configs, MoeModelReference, ::testing::ValuesIn(kModelCases),
                         [](const auto& info) { return std::string(info.param.label); });

}  // namespace
}  // namespace metamorph

// Growth from and to checkpoints: a source saved under tp2 x pp2 grows exactly like its
// single-rank twin, the CLI writes a normal checkpoint whose model computes the source's function
// (checked by an independent PyTorch forward pass over a safetensors file), and bad requests
// leave no output behind.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/transforms/grow.hpp"
#include "runtime/transforms/grow_checkpoint.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"
#include "tests/unit/transforms/grow_test_models.hpp"
#include "tests/unit/transforms/transform_checkpoints.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::load_whole;
using test::shards_of;
using test::state_for;
using test::TempDir;
using test::write_safetensors;

ModelConfig small_config() {
  return test::grow_config({16, 24, 2, 4, 2}, false, true, false, 30);
}
ModelConfig large_config() {
  return test::grow_config({32, 48, 4, 8, 4}, false, true, false, 30);
}

TEST(GrowCheckpoint, Tp2Pp2SourceGrowsLikeItsSingleRankTwin) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = small_config(), to = large_config();
  const ParameterSet whole = test::random_parameters(cpu, from, 12);
  TempDir dir;
  SaveOptions no_optim;
  no_optim.with_optimizer = false;
  save_checkpoint(dir / "single", whole, state_for(from, 1, 1), RankContext{}, no_optim);
  test::run_ranks(4, [&](int rank, const RankContext& context) {
    Arena rank_arena;
    CpuBackend rank_cpu(rank_arena);
    const ParameterSet shards = shards_of(rank_cpu, whole, from.num_layers, rank % 2, rank / 2);
    save_checkpoint(dir / "tp2pp2", shards, state_for(from, 2, 2), context, no_optim);
  });
  GrowOptions options;
  options.method = GrowMethod::aki;  // not function preserving, so any mix-up would show
  options.noise = 0.01;
  options.seed = 3;
  const GrowSummary a = grow_checkpoint(dir / "single", to, options, dir / "grown_single");
  const GrowSummary b = grow_checkpoint(dir / "tp2pp2", to, options, dir / "grown_tp2pp2");
  EXPECT_EQ(a.logit_deviation, b.logit_deviation);
  const ParameterSet ga = load_whole(cpu, to, a.saved), gb = load_whole(cpu, to, b.saved);
  for (const auto& p : ga.all()) {
    const Parameter* q = gb.find(p.name);
    ASSERT_NE(q, nullptr) << p.name;
    EXPECT_EQ(0, std::memcmp(p.value.raw(), q->value.raw(), p.value.bytes())) << p.name;
  }
  // And both equal growing the in-memory model.
  const ParameterSet direct = grow_parameters(cpu, from, whole, to, options);
  for (const auto& p : direct.all())
    EXPECT_EQ(0, std::memcmp(p.value.raw(), ga.find(p.name)->value.raw(), p.value.bytes()))
        << p.name;
}

TEST(GrowCheckpoint, CliGrowsACheckpointAndPyTorchSeesTheSameFunction) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = test::grow_config({16, 24, 2, 4, 2}, true, true, false, 30);
  const ModelConfig to = test::grow_config({32, 48, 4, 8, 4}, true, true, false, 30);
  ParameterSet source = test::random_parameters(cpu, from, 21);
  TempDir dir;
  save_checkpoint(dir / "small", source, state_for(from, 1, 1));
  test::write_file(dir / "large.json", model_config_to_json(to).dump());
  const auto result = test::run_cli({"grow", "--from", (dir / "small").string(), "--to",
                                     (dir / "large.json").string(), "--method", "fpi", "--out",
                                     (dir / "large").string(), "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto summary = nlohmann::json::parse(result.out);
  EXPECT_LT(summary["logit_deviation"].get<double>(), 1e-5);

  // A normal checkpoint: the target config, step 0, no optimizer state, one-rank layout.
  const fs::path saved = resolve_checkpoint(dir / "large");
  ParameterSet grown = make_parameters(cpu, to);
  LoadOptions load;
  load.with_optimizer = false;
  const CheckpointState state = load_checkpoint(saved, grown, load);
  EXPECT_EQ(state.step, 0);
  EXPECT_EQ(model_config_from_json(state.config).hidden_size, 32);
  EXPECT_EQ(state.layout["tp"], 1);
  EXPECT_EQ(state.extra["grown_from"]["step"], 7);

  // Export both models as HF safetensors; an independent float64 PyTorch forward pass reads them.
  write_safetensors(dir / "small.safetensors", source);
  write_safetensors(dir / "large.safetensors", grown);
  test::write_file(dir / "small.json", model_config_to_json(from).dump());
  const Tensor tokens = probe_tokens(cpu, from.vocab_size, 2, 10, 5);
  {
    std::ofstream t(dir / "tokens.bin", std::ios::binary);
    t.write(static_cast<const char*>(tokens.raw()), static_cast<std::streamsize>(tokens.bytes()));
  }
  const auto ref = test::run_shell(
      test::python() + " " + (test::source_dir() / "tests/reference/grow_reference.py").string() +
      " " + dir.path().string() + " 2 10");
  ASSERT_EQ(ref.exit_code, 0) << ref.out;
  const double deviation = std::stod(test::read_file(dir / "deviation.txt"));
  EXPECT_LT(deviation, 1e-5) << "PyTorch: grown vs source logits";
  // And PyTorch's logits of the grown model equal metamorph's.
  Transformer model(cpu, to, grown);
  const Tensor logits = model.logits(tokens);
  const std::string bytes = test::read_file(dir / "large_logits.bin");
  ASSERT_EQ(bytes.size(), logits.bytes());
  const auto* ref_logits = reinterpret_cast<const float*>(bytes.data());
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < logits.numel(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(logits.data<float>()[i] - ref_logits[i])));
    scale = std::max(scale, static_cast<double>(std::abs(ref_logits[i])));
  }
  EXPECT_LT(diff / scale, 1e-5);
}

TEST(GrowCheckpoint, BadRequestsExitWithCode2AndWriteNothing) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = small_config();
  ParameterSet source = test::random_parameters(cpu, from, 2);
  TempDir dir;
  save_checkpoint(dir / "small", source, state_for(from, 1, 1));
  ModelConfig shrunk = large_config();
  shrunk.intermediate_size = 8;
  test::write_file(dir / "shrunk.json", model_config_to_json(shrunk).dump());
  auto r = test::run_cli({"grow", "--from", (dir / "small").string(), "--to",
                          (dir / "shrunk.json").string(), "--out", (dir / "out").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("intermediate_size 8 is smaller than the source's 24"), std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(dir / "out"));
  test::write_file(dir / "large.json", model_config_to_json(large_config()).dump());
  r = test::run_cli({"grow", "--from", (dir / "small").string(), "--to",
                     (dir / "large.json").string(), "--method", "net2net", "--out",
                     (dir / "out").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not one of: fpi, aki, zero"), std::string::npos) << r.err;
  r = test::run_cli({"grow", "--from", (dir / "small").string(), "--to",
                     (dir / "large.json").string(), "--out", (dir / "small").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("already exists and is not empty"), std::string::npos) << r.err;
  r = test::run_cli({"grow", "--from", (dir / "nothing").string(), "--to",
                     (dir / "large.json").string(), "--out", (dir / "out").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_FALSE(fs::exists(dir / "out"));
}

}  // namespace
}  // namespace metamorph

// Upcycling from and to checkpoints: a dense source saved under tp2 x pp2 upcycles exactly like
// its single-rank twin, the CLI writes a normal MoE checkpoint (config, step 0, provenance) that
// loads under tensor parallelism and whose model an independent PyTorch forward pass finds equal
// to the dense model, and bad requests exit with code 2 and leave nothing behind.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/transforms/logit_deviation.hpp"
#include "runtime/transforms/upcycle.hpp"
#include "runtime/transforms/upcycle_checkpoint.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"
#include "tests/unit/transforms/grow_test_models.hpp"
#include "tests/unit/transforms/transform_checkpoints.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

ModelConfig dense_config() {
  return test::grow_config({16, 24, 2, 4, 2}, false, true, false, 30);
}

TEST(UpcycleCheckpoint, Tp2Pp2SourceUpcyclesLikeItsSingleRankTwin) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  const ParameterSet whole = test::random_parameters(cpu, from, 12);
  TempDir dir;
  SaveOptions no_optim;
  no_optim.with_optimizer = false;
  save_checkpoint(dir / "single", whole, test::state_for(from, 1, 1), RankContext{}, no_optim);
  test::run_ranks(4, [&](int rank, const RankContext& context) {
    Arena rank_arena;
    CpuBackend rank_cpu(rank_arena);
    const ParameterSet shards =
        test::shards_of(rank_cpu, whole, from.num_layers, rank % 2, rank / 2);
    save_checkpoint(dir / "tp2pp2", shards, test::state_for(from, 2, 2), context, no_optim);
  });
  UpcycleOptions options;
  options.experts = 4;
  options.top_k = 2;
  options.granularity = 2;
  options.shared_experts = 1;
  options.noise = 0.01;  // seeded, so any mix-up of source tensors would show
  options.drop_fraction = 0.25;
  const UpcycleSummary a = upcycle_checkpoint(dir / "single", options, dir / "moe_single");
  const UpcycleSummary b = upcycle_checkpoint(dir / "tp2pp2", options, dir / "moe_tp2pp2");
  EXPECT_EQ(a.logit_deviation, b.logit_deviation);
  const ParameterSet ma = test::load_whole(cpu, a.to, a.saved);
  const ParameterSet mb = test::load_whole(cpu, b.to, b.saved);
  const ParameterSet direct = upcycle_parameters(cpu, from, whole, options);
  ASSERT_EQ(ma.size(), direct.size());
  for (const auto& p : direct.all()) {
    const Parameter* q = ma.find(p.name);
    const Parameter* r = mb.find(p.name);
    ASSERT_NE(q, nullptr) << p.name;
    ASSERT_NE(r, nullptr) << p.name;
    EXPECT_EQ(0, std::memcmp(p.value.raw(), q->value.raw(), p.value.bytes())) << p.name;
    EXPECT_EQ(0, std::memcmp(p.value.raw(), r->value.raw(), p.value.bytes())) << p.name;
  }
}

TEST(UpcycleCheckpoint, CliWritesAnMoeCheckpointAndPyTorchSeesTheDenseFunction) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  ParameterSet source = test::random_parameters(cpu, from, 21);
  TempDir dir;
  save_checkpoint(dir / "dense", source, test::state_for(from, 1, 1));
  const auto result =
      test::run_cli({"upcycle", "--from", (dir / "dense").string(), "--experts", "4", "--top-k",
                     "2", "--granularity", "2", "--shared-experts", "1", "--shared-expert-gate",
                     "--out", (dir / "moe").string(), "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto summary = nlohmann::json::parse(result.out);
  EXPECT_LT(summary["logit_deviation"].get<double>(), 1e-5);
  EXPECT_EQ(summary["num_experts"], 8);
  EXPECT_EQ(summary["top_k"], 4);
  EXPECT_EQ(summary["expert_intermediate_size"], 12);

  // A normal checkpoint: the MoE config, step 0, no optimizer state, one-rank layout.
  const fs::path saved = resolve_checkpoint(dir / "moe");
  EXPECT_EQ(summary["saved"], saved.string());
  const CheckpointState state = checkpoint::read_index_file(saved).state;
  const ModelConfig to = model_config_from_json(state.config);
  EXPECT_EQ(to.moe.num_experts, 8);
  EXPECT_EQ(to.moe.shared_expert_intermediate_size, 24);
  EXPECT_TRUE(to.moe.shared_expert_gate);
  EXPECT_DOUBLE_EQ(to.moe.aux_loss_coef, 0.001);
  EXPECT_DOUBLE_EQ(to.moe.z_loss_coef, 0.01);
  EXPECT_EQ(state.step, 0);
  EXPECT_EQ(state.layout["tp"], 1);
  EXPECT_EQ(state.extra["upcycled_from"]["step"], 7);
  EXPECT_EQ(state.extra["upcycle"]["granularity"], 2);
  ParameterSet moe = test::load_whole(cpu, to, saved);

  // Loadable under tensor parallelism: each tp2 shard is its slice of the whole tensor.
  for (int rank = 0; rank < 2; ++rank) {
    TensorParallel tp;
    tp.rank = rank;
    tp.size = 2;
    ParameterSet shards = make_parameters(cpu, to, tp);
    LoadOptions load;
    load.with_optimizer = false;
    load_checkpoint(saved, shards, load);
    const Parameter* shard = shards.find(expert_prefix(1, 5) + "down_proj.weight");  // [16, 12]
    ASSERT_EQ(shard->value.shape(), (Shape{16, 6}));
    const float* whole = moe.find(shard->name)->value.data<float>();
    for (std::int64_t r = 0; r < 16; ++r)
      for (std::int64_t c = 0; c < 6; ++c)
        EXPECT_EQ(shard->value.data<float>()[r * 6 + c], whole[r * 12 + rank * 6 + c]);
  }

  // An independent float64 PyTorch forward pass of both models from HF-named safetensors.
  test::write_safetensors(dir / "dense.safetensors", source);
  test::write_safetensors(dir / "moe.safetensors", moe);
  test::write_file(dir / "dense.json", model_config_to_json(from).dump());
  test::write_file(dir / "moe.json", state.config.dump());
  const Tensor tokens = probe_tokens(cpu, from.vocab_size, 2, 10, 5);
  test::write_file(dir / "tokens.bin",
                   std::string(static_cast<const char*>(tokens.raw()), tokens.bytes()));
  const auto ref =
      test::run_shell(test::python() + " " +
                      (test::source_dir() / "tests/reference/upcycle_reference.py").string() + " " +
                      dir.path().string() + " 2 10");
  ASSERT_EQ(ref.exit_code, 0) << ref.out;
  EXPECT_LT(std::stod(test::read_file(dir / "deviation.txt")), 1e-5)
      << "PyTorch: upcycled vs dense logits";
  Transformer model(cpu, to, moe);
  const Tensor logits = model.logits(tokens);
  const std::string bytes = test::read_file(dir / "moe_logits.bin");
  ASSERT_EQ(bytes.size(), logits.bytes());
  const auto* ref_logits = reinterpret_cast<const float*>(bytes.data());
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < logits.numel(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(logits.data<float>()[i] - ref_logits[i])));
    scale = std::max(scale, static_cast<double>(std::abs(ref_logits[i])));
  }
  EXPECT_LT(diff / scale, 1e-5) << "metamorph vs PyTorch logits of the MoE model";
}

TEST(UpcycleCheckpoint, BadRequestsExitWithCode2AndWriteNothing) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig from = dense_config();
  TempDir dir;
  save_checkpoint(dir / "dense", test::random_parameters(cpu, from, 2),
                  test::state_for(from, 1, 1));
  const auto upcycle = [&](const fs::path& source, std::vector<std::string> extra) {
    std::vector<std::string> args = {"upcycle", "--from", source.string(), "--out",
                                     (dir / "out").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return test::run_cli(args);
  };
  const auto expect = [&](const test::CliResult& r, const std::string& message) {
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "out"));
  };
  expect(upcycle(dir / "dense", {"--experts", "1", "--top-k", "1"}),
         "--experts must be at least 2, got 1");
  expect(upcycle(dir / "dense", {"--experts", "4", "--top-k", "5"}),
         "--top-k must be between 1 and --experts (4), got 5");
  expect(upcycle(dir / "dense", {"--granularity", "5"}),
         "--granularity 5 does not divide the dense intermediate_size 24; valid: 1, 2, 3, 4, 6, "
         "8, 12, 24");
  expect(upcycle(dir / "dense", {"--scoring", "softmax"}), "is not one of: softmax_then_topk");
  expect(upcycle(dir / "dense", {"--segment-router", "tied"}),
         "is not one of: shared, independent");
  expect(upcycle(dir / "nothing", {}), "nothing");
  // An MoE checkpoint is refused before any tensor is read.
  const auto made = upcycle(dir / "dense", {"--experts", "2", "--top-k", "1"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  fs::rename(dir / "out", dir / "moe");
  expect(upcycle(dir / "moe", {}), "the source is already a Mixture-of-Experts model (2 experts)");
  const auto r = test::run_cli(
      {"upcycle", "--from", (dir / "dense").string(), "--out", (dir / "moe").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("already exists and is not empty"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace metamorph

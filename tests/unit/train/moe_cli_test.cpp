// An MoE model through the command line end to end: train (metrics with per-layer routing),
// eval, KV-cached generate, safetensors export under Mixtral's names and import back, and the
// planner on the MoE example config; the benchmark-only --moe-force-balance.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/checkpoint/safetensors.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::test {
namespace {

// A byte-level dataset of `fortunes` short fortunes in dir/data (with `validation` of it held
// out) and a tiny Mixtral config dir/moe.json with `extra` JSON fields (or none).
void prepare_tiny_moe(const TempDir& dir, int fortunes, const char* validation,
                      const std::string& extra) {
  std::string corpus;
  for (int i = 0; i < fortunes; ++i)
    corpus +=
        "Fortune " + std::to_string(i) + ": the quick brown fox jumps over the lazy dog.\n%\n";
  write_file(dir / "corpus.txt", corpus);
  write_file(dir / "moe.json", R"({"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32,
      "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 1, "max_position_embeddings": 64, "num_local_experts": 4,
      "num_experts_per_tok": 2)" + (extra.empty() ? "" : ", " + extra) +
                                   "}");
  ASSERT_EQ(
      run_cli({"data", "prepare", "--input", (dir / "corpus.txt").string(), "--tokenizer", "byte",
               "--output", (dir / "data").string(), "--validation-fraction", validation})
          .exit_code,
      0);
}

TEST(MoeCli, TrainEvalGenerateExportImportAndPlan) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(prepare_tiny_moe(dir, 60, "0.1", R"("router_z_loss_coef": 0.001)"));
  auto path = [&](const char* name) { return (dir / name).string(); };
  const auto train = run_cli({"train", "--model", path("moe.json"), "--data", path("data"),
                              "--steps", "2", "--seq", "32", "--micro-batch", "2", "--global-batch",
                              "4", "--save", path("ckpt"), "--metrics", path("m.jsonl")});
  ASSERT_EQ(train.exit_code, 0) << train.err;
  std::istringstream lines(read_file(path("m.jsonl")));
  int steps = 0;
  for (std::string line; std::getline(lines, line); ++steps) {
    const auto j = nlohmann::json::parse(line);
    ASSERT_EQ(j.at("moe").size(), 2u) << line;
    EXPECT_GT(j["moe"][1]["aux_loss"].get<double>(), 0.0) << line;
  }
  EXPECT_EQ(steps, 2);

  const auto eval =
      run_cli({"eval", "--ckpt", path("ckpt"), "--data", path("data"), "--seq", "32", "--json"});
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  EXPECT_GT(nlohmann::json::parse(eval.out)["loss"].get<double>(), 0.0);
  const auto gen = run_cli(
      {"generate", "--ckpt", path("ckpt"), "--prompt", "Fortune", "--max-tokens", "5", "--json"});
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_EQ(nlohmann::json::parse(gen.out)["new_tokens"].get<int>(), 5);

  ASSERT_EQ(
      run_cli({"ckpt", "export", path("ckpt"), "--format", "safetensors", "--out", path("hf")})
          .exit_code,
      0);
  checkpoint::SafetensorsFile file(dir / "hf" / "model.safetensors");
  bool mixtral_names = false, canonical_names = false;
  for (const auto& t : file.tensors()) {
    mixtral_names |= t.name == "model.layers.1.block_sparse_moe.experts.3.w2.weight";
    canonical_names |= t.name.find(".mlp.experts.") != std::string::npos;
  }
  EXPECT_TRUE(mixtral_names);
  EXPECT_FALSE(canonical_names);
  const auto imported = run_cli({"ckpt", "import", path("hf"), "--out", path("back")});
  ASSERT_EQ(imported.exit_code, 0) << imported.err;
  const auto again =
      run_cli({"eval", "--ckpt", path("back"), "--data", path("data"), "--seq", "32", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(nlohmann::json::parse(again.out)["loss"], nlohmann::json::parse(eval.out)["loss"]);

  const auto plan = run_cli({"plan", "--model", (source_dir() / "configs/tiny-moe.json").string(),
                             "--gpus", "8", "--gpu", "h100", "--seq", "256", "--global-batch", "64",
                             "--json", "--out", path("plan.json")});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_FALSE(nlohmann::json::parse(plan.out)["candidates"].empty());
}

// --moe-force-balance (here through a --config JSON file): announced as a benchmark mode, every
// expert gets the same slots; refused, with one line naming the flag, for a dense model and by
// the commands that take no routing options.
TEST(MoeCli, ForceBalanceIsABenchmarkModeOfMoeTrainingOnly) {
  TempDir dir;
  std::string corpus;
  for (int i = 0; i < 60; ++i)
    corpus += "Line " + std::to_string(i) + ": every expert gets the same share of rows.\n%\n";
  write_file(dir / "corpus.txt", corpus);
  const std::string shape = R"("vocab_size": 258, "hidden_size": 32, "intermediate_size": 48,
      "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
      "max_position_embeddings": 64)";
  write_file(dir / "moe.json", "{" + shape + R"(, "model_type": "mixtral",
      "num_local_experts": 4, "num_experts_per_tok": 2})");
  write_file(dir / "dense.json", "{" + shape + "}");
  auto path = [&](const char* name) { return (dir / name).string(); };
  const auto prepared = run_cli({"data", "prepare", "--input", path("corpus.txt"), "--tokenizer",
                                 "byte", "--output", path("data"), "--validation-fraction", "0.1"});
  ASSERT_EQ(prepared.exit_code, 0) << prepared.err;
  write_file(dir / "options.json", R"({"moe-force-balance": true, "steps": 2, "seq": 32,
      "micro-batch": 2, "global-batch": 4})");
  const auto train =
      run_cli({"train", "--config", path("options.json"), "--model", path("moe.json"), "--data",
               path("data"), "--save", path("ckpt"), "--metrics", path("m.jsonl")});
  ASSERT_EQ(train.exit_code, 0) << train.err;
  EXPECT_NE((train.out + train.err).find("--moe-force-balance, a benchmark mode"),
            std::string::npos)
      << train.out << train.err;
  std::istringstream lines(read_file(path("m.jsonl")));
  int steps = 0;
  for (std::string line; std::getline(lines, line); ++steps) {
    const auto j = nlohmann::json::parse(line);
    ASSERT_EQ(j.at("moe").size(), 2u) << line;
    for (const auto& layer : j["moe"])  // 2 x 32 tokens x 2 slots over 4 experts, twice a step
      EXPECT_EQ(layer["tokens_per_expert"], nlohmann::json::array({64, 64, 64, 64})) << line;
  }
  EXPECT_EQ(steps, 2);

  const auto dense = run_cli({"train", "--model", path("dense.json"), "--data", path("data"),
                              "--steps", "1", "--seq", "32", "--moe-force-balance"});
  EXPECT_EQ(dense.exit_code, 2);
  EXPECT_NE(dense.err.find("--moe-force-balance"), std::string::npos) << dense.err;
  EXPECT_EQ(std::count(dense.err.begin(), dense.err.end(), '\n'), 1) << dense.err;

  for (const std::vector<std::string>& other :
       {std::vector<std::string>{"eval", "--ckpt", path("ckpt"), "--data", path("data"),
                                 "--moe-force-balance"},
        std::vector<std::string>{"generate", "--ckpt", path("ckpt"), "--prompt", "Line",
                                 "--moe-force-balance"}}) {
    const auto refused = run_cli(other);
    EXPECT_EQ(refused.exit_code, 2) << other[0];
    EXPECT_NE(refused.err.find("moe-force-balance"), std::string::npos) << refused.err;
  }
}

// --expert-streams (how many CUDA streams the experts' GEMMs share) is accepted on the CPU, where
// it changes nothing, and below 1 is a usage error naming the option.
TEST(MoeCli, ExpertStreamsBelowOneIsAUsageError) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(prepare_tiny_moe(dir, 20, "0", ""));
  auto path = [&](const char* name) { return (dir / name).string(); };
  auto train = [&](const char* streams) {
    return run_cli({"train", "--model", path("moe.json"), "--data", path("data"), "--steps", "1",
                    "--seq", "16", "--micro-batch", "1", "--global-batch", "1", "--expert-streams",
                    streams});
  };
  const auto one = train("1");
  EXPECT_EQ(one.exit_code, 0) << one.err;
  const auto none = train("0");
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("--expert-streams"), std::string::npos) << none.err;
}

// train --timers: every step's metrics carry the seconds of each region of the step (the
// trainer's, every decoder layer's phases, the MoE block's routing, experts and combine, the
// head and the embedding), nested regions within their parents; the run ends with the summary.
// Without the flag no step carries timers.
TEST(MoeCli, TimersReportTheRegionsOfEveryStep) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(prepare_tiny_moe(dir, 40, "0", R"("first_k_dense_replace": 1)"));
  auto path = [&](const char* name) { return (dir / name).string(); };
  const std::vector<std::string> common = {
      "train", "--model", path("moe.json"), "--data", path("data"),     "--steps", "3",
      "--seq", "16",      "--micro-batch",  "2",      "--global-batch", "4"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = common;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  const auto timed = run_cli(with({"--timers", "--metrics", path("timed.jsonl")}));
  ASSERT_EQ(timed.exit_code, 0) << timed.err;
  EXPECT_NE((timed.out + timed.err).find("timers: mean ms per step over 2 steps"),
            std::string::npos)
      << timed.err;
  std::istringstream lines(read_file(path("timed.jsonl")));
  int steps = 0;
  for (std::string line; std::getline(lines, line); ++steps) {
    const auto t = nlohmann::json::parse(line).at("timers");
    for (const char* name :
         {"step", "forward-backward", "gradient reduce", "optimizer", "embedding",
          "attention forward", "attention backward", "norm backward", "mlp forward", "mlp backward",
          "moe forward", "moe routing", "moe experts", "moe combine", "moe backward",
          "moe experts backward", "lm head and loss"})
      ASSERT_TRUE(t.contains(name)) << name << " in " << line;
    for (const auto& [name, seconds] : t.items()) {
      EXPECT_GE(seconds.get<double>(), 0.0) << name;
      EXPECT_LE(seconds.get<double>(), t["step"].get<double>()) << name;
    }
    EXPECT_LE(t["forward-backward"].get<double>() + t["optimizer"].get<double>(),
              t["step"].get<double>());
    EXPECT_LE(t["moe routing"].get<double>() + t["moe experts"].get<double>() +
                  t["moe combine"].get<double>(),
              t["moe forward"].get<double>());
    EXPECT_FALSE(t.contains("tp all-reduce")) << "one rank: no TP sums";
  }
  EXPECT_EQ(steps, 3);
  const auto untimed = run_cli(with({"--metrics", path("untimed.jsonl")}));
  ASSERT_EQ(untimed.exit_code, 0) << untimed.err;
  EXPECT_EQ(read_file(path("untimed.jsonl")).find("timers"), std::string::npos);
}

}  // namespace
}  // namespace metamorph::test

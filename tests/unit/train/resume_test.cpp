// Resume is bit-exact: 20 steps straight equal 10 steps, a checkpoint, and 10 resumed steps, in
// every step's loss bits and in the final weights. Also --init starts a new run from weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "models/init.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

class Resume : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text;
    for (int d = 0; d < 300; ++d)
      text += "document " + std::to_string(d) + ": the quick brown fox " +
              std::string(static_cast<std::size_t>(d % 17), 'a') + " jumps.\n\n";
    test::write_file(dir_ / "corpus.txt", text);
    data::PrepareOptions p;
    p.input = (dir_ / "corpus.txt").string();
    p.tokenizer = "byte";
    p.output_prefix = (dir_ / "data").string();
    p.validation_fraction = 0.05;
    data::prepare_dataset(p);
    test::write_file(dir_ / "model.json", R"({"vocab_size": 258, "hidden_size": 32,
      "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 64})");
  }

  RunOptions options(const std::string& save, std::int64_t steps) const {
    RunOptions o;
    o.model_path = (dir_ / "model.json").string();
    o.data_prefix = (dir_ / "data").string();
    o.steps = 20;
    o.seq = 16;
    o.micro_batch = 2;
    o.global_batch = 4;
    o.lr = 3e-3;
    o.warmup = 3;
    o.eval_every = 5;
    o.save_dir = (dir_ / save).string();
    o.save_every = steps;
    return o;
  }

  std::vector<float> final_weights(const std::string& save) const {
    Arena arena;
    CpuBackend cpu(arena);
    const ModelConfig config = load_model_config((dir_ / "model.json").string());
    ParameterSet params = make_parameters(cpu, config);
    for (auto& p : params.all()) {
      p.adam_m = cpu.zeros(p.value.shape());
      p.adam_v = cpu.zeros(p.value.shape());
    }
    load_checkpoint(dir_ / save, params);
    std::vector<float> all;
    for (const auto& p : params.all())
      for (const Tensor* t : {&p.value, &p.adam_m, &p.adam_v})
        all.insert(all.end(), t->data<float>(), t->data<float>() + t->numel());
    return all;
  }

  // 20 steps straight equal 10 steps, a checkpoint, and 10 resumed steps.
  void expect_bit_exact_resume();

  test::TempDir dir_;
  const Logger quiet_{LogOptions{.rank = 1}};
};

TEST_F(Resume, TwentyStepsEqualTenPlusResumedTen) {
  expect_bit_exact_resume();
}

// An MoE model with every piece of state a resume must carry: sigmoid scoring whose balancing
// bias moves every step (not trainable, saved with the weights), a gated shared expert, a
// capacity that drops tokens, a dense first layer.
TEST_F(Resume, MoeTwentyStepsEqualTenPlusResumedTen) {
  test::write_file(dir_ / "model.json", R"({"model_type": "deepseek_v3", "vocab_size": 258,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 64, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_shared_experts": 1,
    "scoring_func": "sigmoid", "first_k_dense_replace": 1, "router_z_loss_coef": 0.001,
    "metamorph": {"capacity_factor": 1.0, "shared_expert_gate": true,
                  "bias_update_rate": 0.01}})");
  expect_bit_exact_resume();
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = load_model_config((dir_ / "model.json").string());
  ParameterSet params = make_parameters(cpu, config);
  load_checkpoint(dir_ / "split", params);
  const Parameter* bias = params.find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_NE(bias, nullptr);
  double moved = 0;
  for (std::int64_t e = 0; e < bias->value.numel(); ++e)
    moved += std::abs(bias->value.data<float>()[e]);
  EXPECT_GT(moved, 0.0) << "the balancing bias never moved";
}

TEST_F(Resume, MoeMetricsLinesCarryPerLayerRouting) {
  test::write_file(dir_ / "model.json", R"({"model_type": "mixtral", "vocab_size": 258,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 64, "num_local_experts": 4,
    "num_experts_per_tok": 2})");
  RunOptions o = options("metrics", 0);
  o.steps = 2;
  o.warmup = 0;
  o.metrics_path = (dir_ / "metrics.jsonl").string();
  run_training(o, quiet_);
  std::ifstream in(dir_ / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    ASSERT_TRUE(j.contains("moe")) << line;
    ASSERT_EQ(j["moe"].size(), 2u) << line;
    for (const char* key : {"layer", "tokens_min", "tokens_max", "tokens_cv", "aux_loss", "z_loss",
                            "router_entropy", "drop_rate", "tokens_per_expert"})
      EXPECT_TRUE(j["moe"][0].contains(key)) << key;
    ++lines;
  }
  EXPECT_EQ(lines, 2);
}

void Resume::expect_bit_exact_resume() {
  std::vector<double> straight, resumed;
  run_training(options("straight", 0), quiet_,
               [&](const StepMetrics& m) { straight.push_back(m.loss); });
  // The first job saves every 10 steps; removing its step-20 checkpoint leaves exactly what a
  // job killed right after step 10's save would leave (same --steps, so the same LR schedule).
  RunOptions first = options("split", 10);
  std::vector<double> first_half;
  run_training(first, quiet_, [&](const StepMetrics& m) { first_half.push_back(m.loss); });
  std::filesystem::remove_all(dir_ / "split" / "step_00000020");
  test::write_file(dir_ / "split" / "latest", "step_00000010\n");
  RunOptions second = options("split", 0);
  second.model_path.clear();
  second.resume_path = (dir_ / "split").string();
  run_training(second, quiet_, [&](const StepMetrics& m) { resumed.push_back(m.loss); });
  ASSERT_EQ(straight.size(), 20u);
  ASSERT_EQ(resumed.size(), 10u);
  for (std::size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(std::memcmp(&straight[i], &first_half[i], sizeof(double)), 0) << "step " << i + 1;
    EXPECT_EQ(std::memcmp(&straight[10 + i], &resumed[i], sizeof(double)), 0)
        << "step " << 11 + i << ": " << straight[10 + i] << " vs " << resumed[i];
  }
  const auto a = final_weights("straight"), b = final_weights("split");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST_F(Resume, ResumingPastTheLastStepOrWithTwoSourcesIsAnInputError) {
  RunOptions o = options("done", 0);
  o.steps = 3;
  o.warmup = 0;
  run_training(o, quiet_);
  RunOptions again = o;
  again.model_path.clear();
  again.resume_path = (dir_ / "done").string();
  EXPECT_THROW(run_training(again, quiet_), InputError);
  RunOptions both = o;
  both.init_path = (dir_ / "done").string();
  EXPECT_THROW(run_training(both, quiet_), InputError);
}

TEST_F(Resume, InitStartsANewRunFromTheWeights) {
  RunOptions o = options("base", 0);
  o.steps = 4;
  o.warmup = 0;
  run_training(o, quiet_);
  RunOptions next = options("next", 0);
  next.model_path.clear();
  next.init_path = (dir_ / "base").string();
  next.steps = 2;
  next.warmup = 0;
  std::vector<std::int64_t> steps;
  run_training(next, quiet_, [&](const StepMetrics& m) { steps.push_back(m.step); });
  EXPECT_EQ(steps, (std::vector<std::int64_t>{1, 2}));
}

}  // namespace
}  // namespace metamorph

namespace metamorph {
namespace {

// What a scheduler does before preemption: SIGTERM mid-run. The run saves the step it was in,
// exits 0, and the checkpoint resumes.
TEST_F(Resume, SigtermSavesTheCurrentStepAndExitsCleanly) {
  const std::string mm = test::metamorph_binary();
  const std::string args =
      " train --model " + (dir_ / "model.json").string() + " --data " + (dir_ / "data").string() +
      " --steps 100000 --seq 16 --micro-batch 2 --global-batch 4 --save " + (dir_ / "pre").string();
  const auto r =
      test::run_shell("(" + mm + args + " > " + (dir_ / "log").string() +
                      " 2>&1 & pid=$!; sleep 3; kill -TERM $pid; wait $pid; echo rc=$?)");
  EXPECT_NE(r.out.find("rc=0"), std::string::npos) << r.out << test::read_file(dir_ / "log");
  const auto step_dir = resolve_checkpoint(dir_ / "pre");
  EXPECT_TRUE(verify_checkpoint(step_dir).empty());
  EXPECT_NE(test::read_file(dir_ / "log").find("received signal 15"), std::string::npos);
}

}  // namespace
}  // namespace metamorph

namespace metamorph {
namespace {

TEST_F(Resume, BadTrainOptionsAreOneLineAndExitTwo) {
  const std::string model = (dir_ / "model.json").string(), data = (dir_ / "data").string();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"train", "--model", model}, "--data PREFIX is required"},
      {{"train", "--model", model, "--data", data, "--global-batch", "6", "--micro-batch", "4"},
       "--global-batch (6) must be a positive multiple of --micro-batch (4)"},
      {{"train", "--model", model, "--data", data, "--seq", "65"},
       "exceeds the model's max_position_embeddings 64"},
      {{"train", "--model", model, "--data", data, "--steps", "abc"}, "--steps"},
      {{"train", "--model", model, "--seq", "16", "--data", (dir_ / "missing").string()},
       "missing"},
      {{"train", "--model", model, "--data", data, "--on-nonfinite", "pray"}, "valid: stop, skip"},
      {{"train", "--model", model, "--data", data, "--tp", "2"},
       "--tp 2 x --pp 1 x --dp 1 needs 2 ranks but this run has 1"},
      {{"eval", "--ckpt", (dir_ / "nothing").string(), "--data", data}, "nothing"},
  };
  for (const auto& [args, expected] : cases) {
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args[1] << " " << expected;
    EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
}  // namespace metamorph

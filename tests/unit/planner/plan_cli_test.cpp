// `metamorph plan` end to end: the table and plan.json, --json and --csv shapes, --explain,
// sweeps, and bad input as one line on stderr with exit code 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "planner/cluster.hpp"
#include "planner/plan_file.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::test {
namespace {

std::vector<std::string> base(const TempDir& dir) {
  return {"plan",
          "--preset",
          "mixtral-8x7b",
          "--gpus",
          "64",
          "--gpu",
          "h100",
          "--seq",
          "4096",
          "--global-batch",
          "256",
          "--out",
          (dir / "plan.json").string()};
}

std::vector<std::string> with(std::vector<std::string> args, std::vector<std::string> more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

TEST(PlanCli, PrintsTheTableAndWritesAValidPlan) {
  TempDir dir;
  const auto r = run_cli(base(dir));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("tokens/s"), std::string::npos);
  EXPECT_NE(r.out.find("Best: tp"), std::string::npos);
  EXPECT_NE(r.out.find("Limits:"), std::string::npos);
  const auto plan = planner::load_plan(dir / "plan.json");
  EXPECT_EQ(plan.world_size(), 64);
  EXPECT_NE(r.out.find(planner::layout_label(plan.layout)), std::string::npos);
}

TEST(PlanCli, JsonHasTheContractedShapeBestFirst) {
  TempDir dir;
  const auto r = run_cli(with(base(dir), {"--json", "--top", "5"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out);
  const auto& candidates = doc.at("candidates");
  ASSERT_EQ(candidates.size(), 5u);
  double previous = 1e300;
  for (const auto& c : candidates) {
    for (const char* key :
         {"tp", "pp", "vpp", "ep", "etp", "dp", "micro_batch", "num_micro_batches", "recompute",
          "zero1", "memory_bytes", "step_time_s", "tokens_per_s", "mfu", "feasible", "reason"})
      EXPECT_TRUE(c.contains(key)) << key;
    EXPECT_TRUE(c["memory_bytes"].contains("total"));
    for (const char* term :
         {"weights", "grads", "optimizer", "activations", "comm_buffers", "workspace"})
      EXPECT_TRUE(c["memory_bytes"].contains(term)) << term;
    EXPECT_TRUE(c["feasible"].get<bool>());
    EXPECT_LE(c["tokens_per_s"].get<double>(), previous);
    previous = c["tokens_per_s"].get<double>();
  }
  // --all appends the refused layouts with their reasons.
  const auto all = nlohmann::json::parse(run_cli(with(base(dir), {"--json", "--all"})).out);
  const auto& list = all.at("candidates");
  EXPECT_TRUE(std::any_of(list.begin(), list.end(), [](const auto& c) {
    return !c["feasible"].template get<bool>() &&
           c["reason"].template get<std::string>().find("out of memory by") != std::string::npos;
  }));
}

TEST(PlanCli, CsvHasAHeaderAndOneRowPerLayout) {
  TempDir dir;
  const auto r = run_cli(with(base(dir), {"--csv", "--top", "3"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 4);
  EXPECT_EQ(r.out.rfind("layout,tp,pp,", 0), 0u);
}

TEST(PlanCli, ExplainPrintsOneLayoutsBreakdown) {
  TempDir dir;
  auto r = run_cli(with(base(dir), {"--explain", "tp1.pp4.ep8.mb1", "--no-save"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* words : {"memory per GPU", "optimizer state", "EP all-to-all", "PP bubble",
                            "communication per rank", "all_to_all"})
    EXPECT_NE(r.out.find(words), std::string::npos) << words;
  EXPECT_FALSE(std::filesystem::exists(dir / "plan.json"));
  // An infeasible layout is explained with its reason.
  r = run_cli(with(base(dir), {"--explain", "tp1.pp1.ep1.dp64.mb4"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("does not fit: out of memory by"), std::string::npos) << r.out;
  r = run_cli(with(base(dir), {"--explain", "tp3"}));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no such layout"), std::string::npos);
  r = run_cli(with(base(dir), {"--explain", "tpx"}));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("cannot read 'tpx'"), std::string::npos);
}

TEST(PlanCli, SweepsOverGpusAndSequenceLengths) {
  TempDir dir;
  auto r = run_cli(with(base(dir), {"--sweep-gpus", "32,64,128", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out);
  ASSERT_EQ(doc["points"].size(), 3u);
  EXPECT_GT(doc["points"][2]["tokens_per_s"].get<double>(),
            doc["points"][0]["tokens_per_s"].get<double>());
  r = run_cli(with(base(dir), {"--sweep-seq", "1024,2048"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("seq,layout,", 0), 0u);
}

TEST(PlanCli, ModelFileAndDiffusionObjective) {
  TempDir dir;
  write_file(dir / "tiny.json", R"({"vocab_size": 32000, "hidden_size": 1024,
      "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
      "num_key_value_heads": 4})");
  const auto r = run_cli({"plan", "--model", (dir / "tiny.json").string(), "--gpus", "8", "--gpu",
                          "a100-80", "--seq", "2048", "--global-batch", "64", "--objective",
                          "diffusion", "--json", "--no-save"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(nlohmann::json::parse(r.out)["candidates"].empty());
}

void expect_input_error(const std::vector<std::string>& args, const std::string& words) {
  const auto r = run_cli(args);
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.err.find(words), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(PlanCli, BadInputIsOneLineAndExitTwo) {
  TempDir dir;
  const std::string out = (dir / "plan.json").string();
  const std::vector<std::string> job = {"--seq", "4096", "--global-batch", "64", "--out", out};
  const auto plan = [&](std::vector<std::string> args) { return with(args, job); };
  expect_input_error(plan({"plan", "--preset", "llama3-8b", "--gpus", "0"}),
                     "--gpus must be at least 1");
  expect_input_error(plan({"plan", "--preset", "llama3-8b", "--gpus", "12"}),
                     "not a whole number of nodes");
  expect_input_error(plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--gpu", "v100"}),
                     "known GPUs: h100, h200, a100-40, a100-80, b200");
  expect_input_error(plan({"plan", "--preset", "llama9", "--gpus", "8"}), "known presets:");
  expect_input_error(plan({"plan", "--gpus", "8"}), "--model config.json or --preset NAME");
  expect_input_error(plan({"plan", "--preset", "llama3-70b", "--gpus", "1", "--gpu", "a100-40"}),
                     "fits nowhere");
  expect_input_error(plan({"plan", "--preset", "llama3-70b", "--gpus", "1", "--gpu", "a100-40"}),
                     "would fit with");
  expect_input_error({"plan", "--preset", "llama3-8b", "--gpus", "8", "--seq", "4096"},
                     "--global-batch");
  expect_input_error(plan({"plan", "--preset", "mixtral-8x7b", "--gpus", "8", "--moe-load", "0.5"}),
                     "--moe-load 0.5 must be a finite number >= 1");
  expect_input_error(
      plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--gpu-attention", "flash"}),
      "--gpu-attention 'flash' is not one of cudnn-deterministic, cudnn, kernels");
  // Planning for this runtime refuses what `train --plan` could not execute.
  expect_input_error(plan({"plan", "--preset", "mixtral-8x7b", "--gpus", "8", "--accounting",
                           "metamorph", "--vpp", "2"}),
                     "--vpp 2: with --accounting metamorph");
  expect_input_error(plan({"plan", "--preset", "mixtral-8x7b", "--gpus", "8", "--accounting",
                           "metamorph", "--tp", "4", "--etp", "2"}),
                     "--etp 2 with --tp 4: with --accounting metamorph");
  expect_input_error(plan({"plan", "--preset", "mixtral-8x7b", "--gpus", "8", "--accounting",
                           "metamorph", "--tp", "2", "--etp", "1", "--ep", "4"}),
                     "spread whole over the TP group (--etp 1 --ep 2)");
  // Interleaved pairs need TP > 1 and one pipeline stage, named with the value given.
  expect_input_error(
      plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--tp", "1", "--interleave-pairs"}),
      "--interleave-pairs hides tensor-parallel all-reduces behind a second "
      "micro-batch and needs --tp > 1 (or --tp left to the search), got --tp 1");
  expect_input_error(
      plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--pp", "2", "--interleave-pairs"}),
      "needs --pp 1 (or --pp left to the search), got --pp 2");
  expect_input_error(plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--interleave-pairs",
                           "--no-interleave-pairs"}),
                     "--interleave-pairs and --no-interleave-pairs contradict each other");
  write_file(dir / "broken.json", "{\"hidden_size\": 10");
  expect_input_error(plan({"plan", "--model", (dir / "broken.json").string(), "--gpus", "8"}),
                     "not valid JSON");
  write_file(dir / "partial.json", R"({"vocab_size": 100, "num_hidden_layers": 2})");
  expect_input_error(plan({"plan", "--model", (dir / "partial.json").string(), "--gpus", "8"}),
                     "missing field 'hidden_size'");
  expect_input_error(plan({"plan", "--model", (dir / "absent.json").string(), "--gpus", "8"}),
                     "cannot open");
  expect_input_error(plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--tp", "3"}),
                     "no valid layout");
  expect_input_error(plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--headroom", "1.5"}),
                     "--headroom");
  expect_input_error(plan({"plan", "--preset", "llama3-8b", "--gpus", "8", "--calibration",
                           (dir / "absent.json").string()}),
                     "--calibration");
  EXPECT_FALSE(std::filesystem::exists(out));
}

// --interleave-pairs keeps only paired layouts (TP > 1, PP 1) and writes the attribute to the
// plan; --no-interleave-pairs keeps none, though --accounting metamorph offers them.
TEST(PlanCli, InterleavePairsIsForcedOnAndOff) {
  TempDir dir;
  const std::vector<std::string> job = {"plan",
                                        "--preset",
                                        "llama3-8b",
                                        "--gpus",
                                        "8",
                                        "--gpu",
                                        "h100",
                                        "--seq",
                                        "4096",
                                        "--global-batch",
                                        "64",
                                        "--accounting",
                                        "metamorph",
                                        "--json",
                                        "--all",
                                        "--out",
                                        (dir / "plan.json").string()};
  auto r = run_cli(with(job, {"--interleave-pairs"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto doc = nlohmann::json::parse(r.out);
  ASSERT_FALSE(doc.at("candidates").empty());
  for (const auto& c : doc.at("candidates")) {
    EXPECT_TRUE(c.at("interleave_pairs").get<bool>()) << c.at("layout");
    EXPECT_GT(c.at("tp").get<int>(), 1) << c.at("layout");
    EXPECT_EQ(c.at("pp").get<int>(), 1) << c.at("layout");
    EXPECT_NE(c.at("layout").get<std::string>().find(".pairs"), std::string::npos);
  }
  EXPECT_TRUE(planner::load_plan(dir / "plan.json").layout.interleave_pairs);
  r = run_cli(with(job, {"--no-interleave-pairs"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  doc = nlohmann::json::parse(r.out);
  for (const auto& c : doc.at("candidates"))
    EXPECT_FALSE(c.at("interleave_pairs").get<bool>()) << c.at("layout");
  r = run_cli(with(job, {}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  doc = nlohmann::json::parse(r.out);
  bool offered = false;
  for (const auto& c : doc.at("candidates")) offered |= c.at("interleave_pairs").get<bool>();
  EXPECT_TRUE(offered) << "--accounting metamorph searches interleaved pairs";
}

TEST(PlanCli, BenchCalibrateWritesWhatPlanReads) {
  TempDir dir;
  const auto calibration = (dir / "calibration.json").string();
  const auto bench =
      run_cli({"bench", "calibrate", "--out", calibration, "--largest", "256", "--repeats", "1"});
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  const auto doc = nlohmann::json::parse(read_file(calibration));
  ASSERT_EQ(doc["gemm"].size(), 2u);  // squares 128 and 256
  EXPECT_GT(doc["gemm"][1]["tflops"].get<double>(), 0.0);
  EXPECT_EQ(doc["measured_device"]["name"], "cpu");
  EXPECT_GT(doc["measured_device"]["memory_bw_gbs"].get<double>(), 0.0);
  EXPECT_EQ(doc["collectives"].size(), 0u);  // one rank: nothing to exchange
  // The plan runs on the measured device: its name and peak replace the --gpu table's.
  const auto r = run_cli(with(base(dir), {"--calibration", calibration, "--json", "--top", "1"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto plan = nlohmann::json::parse(read_file(dir / "plan.json"));
  EXPECT_EQ(plan["cluster"]["gpu"]["name"], "cpu");
  EXPECT_EQ(plan["cluster"]["gpu"]["peak_tflops"].get<double>(),
            doc["measured_device"]["peak_tflops"].get<double>());
  EXPECT_EQ(run_cli({"bench", "calibrate"}).exit_code, 2);  // --out is required
}

// --gemm-model adds a model's GEMMs and an MoE's experts as their groups (at the balanced rows,
// half and twice that), so that plan prices the experts as the runtime runs them instead of at
// the nearest single GEMM.
TEST(PlanCli, BenchCalibrateMeasuresTheExpertsOfAGemmModel) {
  TempDir dir;
  const auto model = (dir / "moe.json").string();
  {
    std::ofstream out(model);
    out << R"({"model_type": "mixtral", "vocab_size": 512, "hidden_size": 64,
      "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2})";
  }
  const auto calibration = (dir / "calibration.json").string();
  const auto bench =
      run_cli({"bench", "calibrate", "--out", calibration, "--largest", "128", "--repeats", "1",
               "--seq", "32", "--micro-batch", "2", "--gemm-model", model});
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  const auto doc = nlohmann::json::parse(read_file(calibration));
  // The square; q, kv, the FFN, the vocabulary and the FFN's down projection at 32 and 64 tokens
  // (one rank: no TP split); then the 8 experts' up (96 x 64) and down (64 x 96) at 8, 16
  // (64 x 2 / 8) and 32 rows each.
  ASSERT_EQ(doc["gemm"].size(), 17u);
  for (int i = 0; i < 11; ++i) EXPECT_FALSE(doc["gemm"][i].contains("groups")) << i;
  EXPECT_EQ(doc["gemm"][1]["m"].get<double>(), 32.0);
  EXPECT_EQ(doc["gemm"][6]["m"].get<double>(), 64.0);
  EXPECT_EQ(doc["gemm"][10]["n"].get<double>(), 64.0);  // the down projection
  EXPECT_EQ(doc["gemm"][10]["k"].get<double>(), 96.0);
  const double rows[] = {8, 16, 32};
  for (int r = 0; r < 3; ++r) {
    const auto& up = doc["gemm"][11 + 2 * r];
    const auto& down = doc["gemm"][12 + 2 * r];
    EXPECT_EQ(up["m"].get<double>(), rows[r]);
    EXPECT_EQ(up["n"].get<double>(), 96.0);
    EXPECT_EQ(up["k"].get<double>(), 64.0);
    EXPECT_EQ(up["groups"].get<double>(), 8.0);
    EXPECT_EQ(down["m"].get<double>(), rows[r]);
    EXPECT_EQ(down["n"].get<double>(), 64.0);
    EXPECT_EQ(down["k"].get<double>(), 96.0);
    EXPECT_EQ(down["groups"].get<double>(), 8.0);
    EXPECT_GT(down["tflops"].get<double>(), 0.0);
  }
  // The planner reads the groups back.
  const planner::Calibration read = planner::load_calibration(calibration);
  ASSERT_EQ(read.gemms.size(), 17u);
  EXPECT_EQ(read.gemms[0].groups, 1.0);
  EXPECT_EQ(read.gemms[12].groups, 8.0);
  EXPECT_EQ(run_cli({"bench", "calibrate", "--out", calibration, "--gemm-model",
                     (dir / "missing.json").string()})
                .exit_code,
            2);
}

}  // namespace
}  // namespace metamorph::test

// The layout search: every ranked layout obeys the validity rules, refusals carry reasons, the
// user's fixed sizes are honoured, and thousands of candidates take well under a second.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <optional>

#include "planner/presets.hpp"
#include "planner/search.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::planner {
namespace {

Job job(int64_t seq, int64_t global_batch) {
  Job j;
  j.seq = seq;
  j.global_batch = global_batch;
  return j;
}

bool has_reason(const SearchResult& r, const std::string& words) {
  for (const auto& e : r.refused)
    if (e.reason.find(words) != std::string::npos) return true;
  return false;
}

TEST(Search, RankedLayoutsAreValidFitAndSortedByThroughput) {
  const ModelShape m = preset_model("mixtral-8x7b");
  const Cluster cluster = make_cluster(64, 8, gpu_by_name("h100"));
  const Job j = job(4096, 256);
  const auto r = search_layouts(m, j, cluster, Constraints{});
  ASSERT_GT(r.ranked.size(), 100u);
  const double usable = 80.0 * (1 << 30) * 0.95;
  for (size_t i = 0; i < r.ranked.size(); ++i) {
    const Layout& l = r.ranked[i].layout;
    EXPECT_EQ(l.tp * l.pp * l.dp, 64);
    EXPECT_EQ(m.heads % l.tp, 0);
    EXPECT_EQ(m.kv_heads % l.tp, 0);
    EXPECT_EQ(m.num_experts % l.ep, 0);
    EXPECT_EQ(l.dp % l.ep, 0);
    EXPECT_EQ(l.tp % l.etp, 0);
    EXPECT_EQ(static_cast<int64_t>(l.dp) * l.micro_batch * l.num_micro_batches, 256);
    EXPECT_LE(l.tp, 8);
    if (l.vpp > 1) {
      EXPECT_EQ(m.layers % (l.pp * l.vpp), 0);
    }
    EXPECT_LE(r.ranked[i].memory.total(), usable);
    if (i > 0) {
      EXPECT_LE(r.ranked[i].tokens_per_s, r.ranked[i - 1].tokens_per_s);
    }
  }
  EXPECT_TRUE(has_reason(r, "out of memory by"));
  EXPECT_TRUE(has_reason(r, "TP 16 spans nodes (8 GPUs per node)"));
  EXPECT_TRUE(has_reason(r, "experts (8) not divisible by EP 16"));
}

TEST(Search, RefusesWithTheReason) {
  const ModelShape m = preset_model("llama3-8b");
  const Cluster wide = make_cluster(16, 16, gpu_by_name("h100"));
  Constraints c;
  c.fixed.tp = 16;
  auto r = search_layouts(m, job(4096, 64), wide, c);
  EXPECT_TRUE(r.ranked.empty());
  EXPECT_TRUE(has_reason(r, "KV heads (8) not divisible by TP 16"));
  // 12 GPUs, batch 64 at dp 12: not divisible.
  const Cluster twelve = make_cluster(12, 12, gpu_by_name("h100"));
  c = Constraints{};
  c.fixed.tp = 1;
  c.fixed.pp = 1;
  r = search_layouts(m, job(4096, 64), twelve, c);
  EXPECT_TRUE(has_reason(r, "global batch 64 not divisible by DP x micro-batch = 12"));
}

TEST(Search, HonoursFixedSizesAndLimits) {
  const ModelShape m = preset_model("llama3-70b");
  const Cluster cluster = make_cluster(64, 8, gpu_by_name("h100"));
  Constraints c;
  c.fixed.tp = 8;
  c.max_pp = 4;
  c.allow_recompute = false;
  c.fixed.recompute = Recompute::none;
  const auto r = search_layouts(m, job(4096, 512), cluster, c);
  ASSERT_FALSE(r.ranked.empty());
  for (const auto& e : r.ranked) {
    EXPECT_EQ(e.layout.tp, 8);
    EXPECT_LE(e.layout.pp, 4);
    EXPECT_EQ(e.layout.recompute, Recompute::none);
  }
}

// Planning for metamorph's runtime (`plan --accounting metamorph`): only what `train --plan`
// executes is ranked or refused.
TEST(Search, RuntimeOnlyKeepsTheLayoutsTheRuntimeExecutes) {
  const ModelShape m = preset_model("mixtral-8x7b");
  const Cluster cluster = make_cluster(32, 8, gpu_by_name("h100"));
  Constraints c;
  const auto all = search_layouts(m, job(4096, 256), cluster, c);
  c.runtime_only = true;
  const auto runtime = search_layouts(m, job(4096, 256), cluster, c);
  ASSERT_FALSE(runtime.ranked.empty());
  EXPECT_LT(runtime.candidates(), all.candidates());
  int over_tp = 0;
  for (const auto* list : {&runtime.ranked, &runtime.refused})
    for (const auto& e : *list) {
      const std::string name = layout_label(e.layout);
      EXPECT_EQ(e.layout.vpp, 1) << name;
      EXPECT_NE(e.layout.recompute, Recompute::selective) << name;
      EXPECT_FALSE(e.layout.sequence_parallel) << name;
      // Experts split like the dense MLP, or whole over the TP group (etp 1, ep = tp).
      EXPECT_TRUE(e.layout.tp == 1 || e.layout.etp == e.layout.tp || e.layout.experts_over_tp())
          << name;
      over_tp += e.layout.experts_over_tp();
    }
  EXPECT_GT(over_tp, 0) << "whole experts over the TP group are searched";
  // A dense model has no expert-TP to match: its TP layouts stay (expert-TP is 1 there).
  const ModelShape dense = preset_model("llama3-8b");
  c.fixed.tp = 2;
  const auto tp2 = search_layouts(dense, job(4096, 64), make_cluster(8, 8, gpu_by_name("h100")), c);
  EXPECT_FALSE(tp2.ranked.empty());
  // Nor an expert-DP group for ZeRO-1 to shard over: without DP it is refused.
  for (const auto& e : tp2.ranked)
    EXPECT_FALSE(e.layout.zero1 && e.layout.dp == 1) << layout_label(e.layout);
}

// Interleaved pairs are offered, for this runtime, exactly where it runs them: TP > 1, one
// pipeline stage, two micro-batches per replica; each valid plain layout gets a paired twin.
TEST(Search, InterleavedPairsOnlyWhereTheRuntimeRunsThem) {
  const ModelShape m = preset_model("llama3-8b");
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  Constraints c;
  c.runtime_only = true;
  Job j = job(4096, 16);
  j.accounting = ActivationAccounting::metamorph;
  const auto r = search_layouts(m, j, cluster, c);
  size_t paired = 0, pairable = 0;
  for (const auto* list : {&r.ranked, &r.refused})
    for (const auto& e : *list) {
      const Layout& l = e.layout;
      const bool can_pair = l.tp > 1 && l.pp == 1 && l.num_micro_batches >= 2;
      if (l.interleave_pairs) {
        ++paired;
        EXPECT_TRUE(can_pair) << layout_label(l);
      } else if (can_pair) {
        ++pairable;
      }
    }
  EXPECT_GT(paired, 0u);
  EXPECT_EQ(paired, pairable);
  // Not for other software (the Megatron accounting), unless asked for.
  const auto other = search_layouts(m, job(4096, 16), cluster, Constraints{});
  for (const auto* list : {&other.ranked, &other.refused})
    for (const auto& e : *list) EXPECT_FALSE(e.layout.interleave_pairs) << layout_label(e.layout);
  // Asked for: only TP > 1 and PP 1, and too few micro-batches refused with the reason.
  c.fixed.interleave_pairs = true;
  const auto forced = search_layouts(m, job(4096, 4), cluster, c);
  ASSERT_FALSE(forced.ranked.empty());
  for (const auto* list : {&forced.ranked, &forced.refused})
    for (const auto& e : *list) {
      EXPECT_TRUE(e.layout.interleave_pairs);
      EXPECT_GT(e.layout.tp, 1);
      EXPECT_EQ(e.layout.pp, 1);
    }
  EXPECT_TRUE(has_reason(forced, "interleaved pairs need at least two micro-batches per replica"));
}

TEST(Search, InterleavedPairsRefuseTp1AndPipelines) {
  const ModelShape m = preset_model("llama3-8b");
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  const auto refused = [&](std::optional<int> tp, std::optional<int> pp, const std::string& words) {
    Constraints c;
    c.fixed.interleave_pairs = true;
    c.fixed.tp = tp;
    c.fixed.pp = pp;
    try {
      search_layouts(m, job(4096, 16), cluster, c);
      ADD_FAILURE() << "accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  refused(1, std::nullopt, "needs --tp > 1 (or --tp left to the search), got --tp 1");
  refused(std::nullopt, 2, "needs --pp 1 (or --pp left to the search), got --pp 2");
  refused(2, 4, "got --pp 4");
  Constraints c;
  c.fixed.interleave_pairs = true;
  c.fixed.tp = 2;
  c.fixed.pp = 1;
  EXPECT_NO_THROW(validate_constraints(c));
}

TEST(Search, RecomputeMakesLongSequencesFit) {
  const ModelShape m = preset_model("llama3-8b");
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("a100-40"));
  Constraints none;
  none.fixed.recompute = Recompute::none;
  none.allow_recompute = false;
  Constraints any;
  const Job j = job(16384, 8);
  const auto without = search_layouts(m, j, cluster, none);
  const auto with = search_layouts(m, j, cluster, any);
  ASSERT_FALSE(with.ranked.empty());
  EXPECT_LT(without.ranked.size(), with.ranked.size());
}

TEST(Search, ThousandsOfCandidatesInWellUnderASecond) {
  const ModelShape m = preset_model("mixtral-8x7b");
  const Cluster cluster = make_cluster(256, 8, gpu_by_name("h100"));
  const auto start = std::chrono::steady_clock::now();
  const auto r = search_layouts(m, job(4096, 1024), cluster, Constraints{});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GT(r.candidates(), 5000u);
  EXPECT_LT(seconds, 1.0);
}

TEST(Search, NoFitAdviceSaysByHowMuchAndWhatWouldFit) {
  const ModelShape m = preset_model("llama3-70b");
  const Cluster cluster = make_cluster(2, 8, gpu_by_name("a100-80"));
  Constraints c;
  const Job j = job(4096, 16);
  const auto r = search_layouts(m, j, cluster, c);
  ASSERT_TRUE(r.ranked.empty());
  const std::string advice = no_fit_advice(m, j, cluster, c, r);
  EXPECT_NE(advice.find("fits nowhere"), std::string::npos) << advice;
  EXPECT_NE(advice.find("GiB more than the"), std::string::npos) << advice;
  EXPECT_NE(advice.find("would fit with 32 GPUs"), std::string::npos) << advice;
}

TEST(Search, RejectsAnEmptyJob) {
  const ModelShape m = preset_model("llama3-8b");
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  EXPECT_THROW(search_layouts(m, job(0, 8), cluster, Constraints{}), InputError);
  EXPECT_THROW(search_layouts(m, job(4096, 0), cluster, Constraints{}), InputError);
}

TEST(Cluster, ImpossibleClustersAndUnknownGpus) {
  EXPECT_THROW(make_cluster(0, 8, gpu_by_name("h100")), InputError);
  try {
    make_cluster(12, 8, gpu_by_name("h100"));
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not a whole number of nodes"), std::string::npos);
  }
  try {
    gpu_by_name("v100");
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("h100, h200, a100-40, a100-80, b200"), std::string::npos);
  }
  EXPECT_EQ(gpu_by_name("H100").name, "h100");
}

TEST(Cluster, CalibrationSamplesReplaceTheDefaults) {
  Calibration c = calibration_from_json(nlohmann::json::parse(R"({
    "gemm": [{"m": 4096, "n": 4096, "k": 4096, "tflops": 700}],
    "collectives": [
      {"op": "all_reduce", "group": 8, "intra_node": true, "bytes": 1e9, "seconds": 0.01},
      {"op": "all_reduce", "group": 8, "intra_node": true, "bytes": 1e3, "seconds": 3e-5}]})"));
  Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"), c);
  EXPECT_NEAR(gemm_efficiency(c, cluster.gpu, 4000, 4000, 4000), 700.0 / 989, 1e-12);
  // Bus bandwidth 1e9 * 1.75 / 0.01 = 175 GB/s; 1e9 bytes then take 0.01 s plus latency.
  EXPECT_NEAR(collective_seconds(cluster, Collective::all_reduce, 1e9, 8, 8), 0.01, 1e-4);
  EXPECT_THROW(calibration_from_json(nlohmann::json::parse(R"({"gemm_efficiency": 2})")),
               InputError);
  EXPECT_THROW(
      calibration_from_json(nlohmann::json::parse(R"({"collectives": [{"op": "bcast"}]})")),
      InputError);
}

// An MoE layer's experts are priced by the samples of as many experts run as the runtime runs
// them; a single GEMM of the same shape is the fallback, not the nearest match.
TEST(Cluster, ExpertGroupsPickTheirOwnSamples) {
  Calibration c = calibration_from_json(nlohmann::json::parse(R"({"gemm": [
    {"m": 2048, "n": 3584, "k": 2048, "tflops": 480},
    {"m": 2048, "n": 3584, "k": 2048, "tflops": 640, "groups": 8},
    {"m": 4096, "n": 3584, "k": 2048, "tflops": 700, "groups": 4}]})"));
  const GpuSpec h100 = gpu_by_name("h100");
  EXPECT_DOUBLE_EQ(gemm_efficiency(c, h100, 2048, 3584, 2048), 480.0 / 989);
  EXPECT_DOUBLE_EQ(gemm_efficiency(c, h100, 2048, 3584, 2048, 8), 640.0 / 989);
  EXPECT_DOUBLE_EQ(gemm_efficiency(c, h100, 1024, 3584, 2048, 8), 640.0 / 989);
  EXPECT_DOUBLE_EQ(gemm_efficiency(c, h100, 4096, 3584, 2048, 4), 700.0 / 989);
  // Written back only where they are groups; a group count below 1 is refused.
  const nlohmann::json doc = calibration_to_json(c);
  EXPECT_FALSE(doc["gemm"][0].contains("groups"));
  EXPECT_EQ(doc["gemm"][1]["groups"].get<double>(), 8.0);
  EXPECT_THROW(calibration_from_json(nlohmann::json::parse(
                   R"({"gemm": [{"m": 1, "n": 1, "k": 1, "tflops": 1, "groups": 0}]})")),
               InputError);
}

}  // namespace
}  // namespace metamorph::planner

namespace metamorph::planner {
namespace {

// The calibration measured on an H100 (planner/tools/torch_calibration.py) loads and drives
// the GEMM efficiencies.
TEST(Cluster, MeasuredCalibrationFileLoads) {
  const Calibration c = load_calibration(std::filesystem::path(METAMORPH_CONFIGS_DIR) /
                                         "calibration-h100-torch-isolated.json");
  ASSERT_EQ(c.gemms.size(), 45u);
  EXPECT_GT(c.attention_efficiency, 0.5);
  const GpuSpec h100 = gpu_by_name("h100");
  EXPECT_GT(gemm_efficiency(c, h100, 8192, 14336, 4096), 0.7);
  EXPECT_LT(gemm_efficiency(c, h100, 2048, 512, 1024), 0.1);
}

}  // namespace
}  // namespace metamorph::planner

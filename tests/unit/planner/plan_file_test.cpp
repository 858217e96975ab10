// plan.json: what save_plan writes load_plan reads back; broken plans are refused by field.
#include <gtest/gtest.h>

#include "planner/plan_file.hpp"
#include "planner/presets.hpp"
#include "planner/search.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::planner {
namespace {

Plan best_plan() {
  const ModelShape m = preset_model("mixtral-8x7b");
  Job j;
  j.seq = 4096;
  j.global_batch = 128;
  j.objective = Objective::diffusion;
  const Cluster cluster = make_cluster(32, 8, gpu_by_name("h200"));
  const auto r = search_layouts(m, j, cluster, Constraints{});
  return make_plan(m, preset_config("mixtral-8x7b"), "preset:mixtral-8x7b", j, cluster,
                   r.ranked.front());
}

TEST(PlanFile, RoundTripsEveryField) {
  test::TempDir dir;
  const Plan plan = best_plan();
  save_plan(plan, dir / "plan.json");
  EXPECT_FALSE(std::filesystem::exists(dir / "plan.json.tmp"));
  const Plan back = load_plan(dir / "plan.json");
  EXPECT_EQ(layout_label(back.layout), layout_label(plan.layout));
  EXPECT_EQ(back.layout.num_micro_batches, plan.layout.num_micro_batches);
  EXPECT_EQ(back.layout.sequence_parallel, plan.layout.sequence_parallel);
  EXPECT_EQ(back.world_size(), 32);
  EXPECT_EQ(back.job.seq, 4096);
  EXPECT_EQ(back.job.global_batch, 128);
  EXPECT_EQ(back.job.objective, Objective::diffusion);
  EXPECT_EQ(back.cluster.gpu.name, "h200");
  EXPECT_EQ(back.cluster.gpus_per_node, 8);
  EXPECT_EQ(count_parameters(back.model).total, count_parameters(plan.model).total);
  EXPECT_EQ(back.predictions, plan.predictions);
  EXPECT_EQ(plan_to_json(back), plan_to_json(plan));
}

// Interleaved pairs survive the round trip; a plan written before they existed (no field) runs
// the micro-batches one at a time.
TEST(PlanFile, InterleavePairsRoundTripsAndDefaultsToOff) {
  test::TempDir dir;
  const ModelShape m = preset_model("llama3-8b");
  Job j;
  j.seq = 4096;
  j.global_batch = 64;
  j.accounting = ActivationAccounting::metamorph;
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  Constraints c;
  c.runtime_only = true;
  c.fixed.interleave_pairs = true;
  const auto r = search_layouts(m, j, cluster, c);
  ASSERT_FALSE(r.ranked.empty());
  const Plan plan =
      make_plan(m, preset_config("llama3-8b"), "preset:llama3-8b", j, cluster, r.ranked.front());
  ASSERT_TRUE(plan.layout.interleave_pairs);
  save_plan(plan, dir / "plan.json");
  const Plan back = load_plan(dir / "plan.json");
  EXPECT_TRUE(back.layout.interleave_pairs);
  EXPECT_EQ(plan_to_json(back), plan_to_json(plan));
  EXPECT_EQ(plan_to_json(plan)["layout"]["interleave_pairs"], true);
  EXPECT_EQ(plan.predictions["interleave_pairs"], true);

  auto old = plan_to_json(plan);
  old["layout"].erase("interleave_pairs");
  EXPECT_FALSE(plan_from_json(old).layout.interleave_pairs);
  auto wrong = plan_to_json(plan);
  wrong["layout"]["interleave_pairs"] = "yes";
  try {
    plan_from_json(wrong);
    ADD_FAILURE() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'layout.interleave_pairs' must be true or false"),
              std::string::npos)
        << e.what();
  }
  // A paired layout the runtime cannot run (one micro-batch per replica) is refused.
  auto single = plan_to_json(plan);
  single["global_batch"] = single["micro_batch"].get<int64_t>() * plan.layout.dp;
  single["num_micro_batches"] = 1;
  try {
    plan_from_json(single);
    ADD_FAILURE() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("at least two micro-batches per replica, got 1"),
              std::string::npos)
        << e.what();
  }
}

void expect_refused(nlohmann::json doc, const std::string& words) {
  try {
    plan_from_json(doc);
    ADD_FAILURE() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(PlanFile, RefusesBrokenPlansNamingTheField) {
  const nlohmann::json good = plan_to_json(best_plan());
  auto doc = good;
  doc["layout"].erase("tp");
  expect_refused(doc, "missing field 'layout.tp'");
  doc = good;
  doc["micro_batch"] = -1;
  expect_refused(doc, "'micro_batch' must be a positive integer");
  doc = good;
  doc["world_size"] = 7;
  expect_refused(doc, "world_size 7 disagrees");
  doc = good;
  doc["layout"]["dp"] = doc["layout"]["dp"].get<int>() * 2;
  expect_refused(doc, "world_size 32 disagrees with tp x pp x dp = 64");
  doc.erase("world_size");
  expect_refused(doc, "the cluster has 32 GPUs");
  doc = good;
  doc["layout"].erase("dp");
  doc["layout"]["dp"] = good["layout"]["dp"];
  doc["num_micro_batches"] = 3;
  expect_refused(doc, "!= global batch");
  doc = good;
  doc["recompute"] = "some";
  expect_refused(doc, "not one of none, selective, full");
  doc = good;
  doc["version"] = 9;
  expect_refused(doc, "version 9 is not supported");
  doc = good;
  doc["model"].erase("num_attention_heads");
  expect_refused(doc, "missing field 'num_attention_heads'");
}

TEST(PlanFile, LoadErrorsNameThePath) {
  test::TempDir dir;
  EXPECT_THROW(load_plan(dir / "absent.json"), InputError);
  test::write_file(dir / "bad.json", "{nope");
  try {
    load_plan(dir / "bad.json");
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json: not valid JSON"), std::string::npos);
  }
}

TEST(PlanFile, WorldSizeCheckSaysBothNumbers) {
  const Plan plan = best_plan();
  EXPECT_NO_THROW(require_world_size(plan, 32));
  try {
    require_world_size(plan, 16);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("for 32 ranks"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("runs on 16 ranks"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace metamorph::planner

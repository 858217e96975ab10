// The planner against published Megatron-LM runs (docs/planner.md lists the sources): per-GPU
// throughput of the published layouts within 15%, and the layout the planner picks within 10%
// of the published best.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "planner/presets.hpp"
#include "planner/search.hpp"

namespace metamorph::planner {
namespace {

ModelShape gpt(int64_t hidden, int64_t heads, int64_t layers) {
  nlohmann::json config = preset_config("gpt3-175b");
  config["hidden_size"] = hidden;
  config["intermediate_size"] = 4 * hidden;
  config["num_attention_heads"] = heads;
  config["num_key_value_heads"] = heads;
  config["num_hidden_layers"] = layers;
  return model_shape_from_json(config);
}

// Hardware FLOPs per step as the papers count them: full recompute repeats the layers' forward.
double hardware_flops(const ModelShape& model, const Job& job, Recompute recompute) {
  const double tokens = static_cast<double>(job.seq * job.global_batch);
  const double head = 6.0 * model.vocab_size * model.hidden;
  const double layers = training_flops_per_token(model, job.seq) - head;
  const double extra = recompute == Recompute::full ? layers / 3.0 : 0.0;
  return tokens * (layers + head + extra);
}

struct Published {
  const char* name;
  int64_t hidden, heads, layers;
  int tp, pp, gpus;
  int64_t global_batch;
  double tflops_per_gpu;  // as published (hardware FLOPs with full recompute)
};

// Narayanan et al. 2021, Table 1: GPT, seq 2048, vocab 51200, A100-80GB, full recompute.
const Published kWeakScaling[] = {
    {"1.7B", 2304, 24, 24, 1, 1, 32, 512, 137},
    {"3.6B", 3072, 32, 30, 2, 1, 64, 512, 138},
    {"7.5B", 4096, 32, 36, 4, 1, 128, 512, 142},
    {"18.4B", 6144, 48, 40, 8, 1, 256, 1024, 135},
    {"39.1B", 8192, 64, 48, 8, 2, 512, 1536, 138},
    {"76.1B", 10240, 80, 60, 8, 4, 1024, 1792, 140},
    {"145.6B", 12288, 96, 80, 8, 8, 1536, 2304, 148},
    {"310.1B", 16384, 128, 96, 8, 16, 1920, 2160, 155},
    {"529.6B", 20480, 128, 105, 8, 35, 2520, 2520, 163},
    {"1008.0B", 25600, 160, 128, 8, 64, 3072, 3072, 163},
};

struct PublishedRecompute {
  const char* name;
  int64_t hidden, heads, layers;
  int tp, pp, gpus, micro_batch;
  int64_t global_batch;
  double seconds_selective;  // sequence parallel + selective recompute
  double seconds_full;       // full recompute
};

// Korthikanti et al. 2022, Tables 3 and 5: A100-80GB, seq 2048, DP 1.
const PublishedRecompute kRecompute[] = {
    {"22B", 6144, 64, 48, 8, 1, 8, 4, 4, 1.10, 1.42},
    {"175B", 12288, 96, 96, 8, 8, 64, 1, 64, 13.75, 18.13},
    {"530B", 20480, 128, 105, 8, 35, 280, 1, 280, 37.83, 49.05},
    {"1T", 25600, 160, 128, 8, 64, 512, 1, 512, 71.49, 94.42},
};

Cluster a100(int gpus) {
  return make_cluster(gpus, 8, gpu_by_name("a100-80"));
}

// Megatron-LM of 2021 reduced gradients after the backward pass, not overlapped with it, and had
// no sequence parallelism (the searches below set Constraints::sequence_parallel = false).
Cluster a100_2021(int gpus) {
  Calibration calibration;
  calibration.grad_reduce_overlap = 0;
  calibration.tp_backward_overlap = 0;  // each input gradient summed before the weight gradients
  return make_cluster(gpus, 8, gpu_by_name("a100-80"), calibration);
}

TEST(PublishedFigures, NarayananWeakScalingThroughputWithin15Percent) {
  for (const auto& p : kWeakScaling) {
    const ModelShape model = gpt(p.hidden, p.heads, p.layers);
    Job job;
    job.seq = 2048;
    job.global_batch = p.global_batch;
    Constraints c;
    c.fixed.tp = p.tp;
    c.fixed.pp = p.pp;
    c.fixed.recompute = Recompute::full;
    c.fixed.zero1 = false;
    c.fixed.vpp = 1;
    c.sequence_parallel = false;
    const auto result = search_layouts(model, job, a100_2021(p.gpus), c);
    ASSERT_FALSE(result.ranked.empty()) << p.name << ": " << result.refused.front().reason;
    const Evaluation& e = result.ranked.front();
    const double tflops =
        hardware_flops(model, job, Recompute::full) / e.time.total() / p.gpus / 1e12;
    std::printf("%-8s %-40s predicted %6.1f published %6.1f TFLOP/s/GPU (%+.1f%%)\n", p.name,
                layout_label(e.layout).c_str(), tflops, p.tflops_per_gpu,
                100 * (tflops / p.tflops_per_gpu - 1));
    EXPECT_NEAR(tflops / p.tflops_per_gpu, 1.0, 0.15) << p.name;
  }
}

TEST(PublishedFigures, KorthikantiIterationTimesWithin15Percent) {
  for (const auto& p : kRecompute) {
    const ModelShape model = gpt(p.hidden, p.heads, p.layers);
    Job job;
    job.seq = 2048;
    job.global_batch = p.global_batch;
    for (Recompute rc : {Recompute::selective, Recompute::full}) {
      Layout l;
      l.tp = p.tp;
      l.pp = p.pp;
      l.dp = 1;
      l.micro_batch = p.micro_batch;
      l.num_micro_batches = p.global_batch / p.micro_batch;
      l.recompute = rc;
      l.sequence_parallel = true;  // assumed for both; docs/planner.md
      const Evaluation e = evaluate(model, job, a100(p.gpus), l, 0.0);
      ASSERT_TRUE(e.valid) << p.name << ": " << e.reason;
      EXPECT_TRUE(e.feasible) << p.name << " " << recompute_name(rc) << ": " << e.reason;
      const double published = rc == Recompute::selective ? p.seconds_selective : p.seconds_full;
      std::printf("%-5s %-9s predicted %7.2f s published %7.2f s (%+.1f%%), %.1f GiB\n", p.name,
                  recompute_name(rc), e.time.total(), published,
                  100 * (e.time.total() / published - 1), e.memory.total() / (1 << 30));
      EXPECT_NEAR(e.time.total() / published, 1.0, 0.15) << p.name << " " << recompute_name(rc);
    }
  }
}

// The search over everything the paper varied (TP, PP, micro-batch, recompute; DP was held at
// one) finds a layout within 10% of the published best.
TEST(PublishedFigures, PickedLayoutWithin10PercentOfPublishedBest) {
  for (const auto& p : kRecompute) {
    const ModelShape model = gpt(p.hidden, p.heads, p.layers);
    Job job;
    job.seq = 2048;
    job.global_batch = p.global_batch;
    Constraints c;
    c.fixed.dp = 1;
    c.fixed.vpp = 1;
    const auto result = search_layouts(model, job, a100(p.gpus), c);
    ASSERT_FALSE(result.ranked.empty()) << p.name;
    const Evaluation& best = result.ranked.front();
    const double published_tokens_per_s = 2048.0 * p.global_batch / p.seconds_selective;
    std::printf("%-5s picks %-40s %9.0f tokens/s, published best %9.0f (%+.1f%%)\n", p.name,
                layout_label(best.layout).c_str(), best.tokens_per_s, published_tokens_per_s,
                100 * (best.tokens_per_s / published_tokens_per_s - 1));
    EXPECT_NEAR(best.tokens_per_s / published_tokens_per_s, 1.0, 0.10) << p.name;
  }
  // Weak scaling: the paper's (TP, PP) per size, full recompute as it used throughout.
  for (const auto& p : kWeakScaling) {
    const ModelShape model = gpt(p.hidden, p.heads, p.layers);
    Job job;
    job.seq = 2048;
    job.global_batch = p.global_batch;
    Constraints c;
    c.fixed.recompute = Recompute::full;
    c.fixed.zero1 = false;
    c.fixed.vpp = 1;
    c.sequence_parallel = false;
    const auto result = search_layouts(model, job, a100_2021(p.gpus), c);
    ASSERT_FALSE(result.ranked.empty()) << p.name;
    const Evaluation& best = result.ranked.front();
    const double tflops =
        hardware_flops(model, job, Recompute::full) / best.time.total() / p.gpus / 1e12;
    std::printf("%-8s picks %-40s %6.1f TFLOP/s/GPU, published tp%d.pp%d %6.1f (%+.1f%%)\n", p.name,
                layout_label(best.layout).c_str(), tflops, p.tp, p.pp, p.tflops_per_gpu,
                100 * (tflops / p.tflops_per_gpu - 1));
    EXPECT_NEAR(tflops / p.tflops_per_gpu, 1.0, 0.10) << p.name;
  }
}

// Megatron-Core MoE README (MCore v0.9): 468 TFLOP/s per H100 for Mixtral 8x7B in bf16.
TEST(PublishedFigures, MixtralOnH100Within15Percent) {
  const ModelShape model = preset_model("mixtral-8x7b");
  Job job;
  job.seq = 4096;
  job.global_batch = 256;
  const Cluster cluster = make_cluster(64, 8, gpu_by_name("h100"));
  const auto result = search_layouts(model, job, cluster, Constraints{});
  ASSERT_FALSE(result.ranked.empty());
  const Evaluation& best = result.ranked.front();
  const double tflops = best.model_flops_per_step / best.time.total() / cluster.gpus / 1e12;
  std::printf("mixtral-8x7b picks %s: %.0f TFLOP/s/GPU, published 468 (%+.1f%%)\n",
              layout_label(best.layout).c_str(), tflops, 100 * (tflops / 468 - 1));
  EXPECT_NEAR(tflops / 468.0, 1.0, 0.15);
}

}  // namespace
}  // namespace metamorph::planner

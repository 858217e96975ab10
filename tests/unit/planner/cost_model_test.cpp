// Memory and communication terms against hand-computed values: the bytes-per-parameter rule,
// Korthikanti et al. 2022 section 4 activation formulas, and the communication conventions of
// docs/planner.md.
#include <gtest/gtest.h>

#include "planner/cost_model.hpp"
#include "planner/model_shape.hpp"
#include "planner/presets.hpp"
#include "planner/runtime_memory.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::planner {
namespace {

Layout layout(int tp, int pp, int dp, int mb, int64_t mbs, Recompute rc = Recompute::none) {
  Layout l;
  l.tp = tp;
  l.pp = pp;
  l.dp = dp;
  l.micro_batch = mb;
  l.num_micro_batches = mbs;
  l.recompute = rc;
  l.sequence_parallel = tp > 1;
  return l;
}

Job job(int64_t seq, int64_t global_batch) {
  Job j;
  j.seq = seq;
  j.global_batch = global_batch;
  return j;
}

TEST(CostModel, WeightsGradsAndOptimizerFollowTheBytesPerParameterRule) {
  const ModelShape m = preset_model("llama3-8b");
  const double n = static_cast<double>(count_parameters(m).total);
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  Layout l = layout(1, 1, 8, 1, 4);
  auto mem = rank_memory(m, job(4096, 32), cluster, l, 0);
  EXPECT_DOUBLE_EQ(mem.weights, 2 * n);
  EXPECT_DOUBLE_EQ(mem.grads, 4 * n);
  EXPECT_DOUBLE_EQ(mem.optimizer, 12 * n);
  l.zero1 = true;  // shards master weights and both moments over DP
  mem = rank_memory(m, job(4096, 32), cluster, l, 0);
  EXPECT_DOUBLE_EQ(mem.optimizer, 12 * n / 8);
}

TEST(CostModel, ExpertStateIsShardedOverExpertDataParallelRanks) {
  const ModelShape m = preset_model("mixtral-8x7b");
  const Cluster cluster = make_cluster(16, 8, gpu_by_name("h100"));
  Layout l = layout(2, 1, 8, 1, 8);
  l.ep = 4;
  l.zero1 = true;
  ASSERT_EQ(l.expert_dp(), 4);
  const auto params = rank_parameters(m, l, 0);
  const double experts = 32.0 * 8 * 3 * 4096 * 14336;
  EXPECT_DOUBLE_EQ(params.expert, experts / 4);
  const auto mem = rank_memory(m, job(4096, 64), cluster, l, 0);
  EXPECT_DOUBLE_EQ(mem.optimizer, params.dense * 12 / 8 + params.expert * 12 / 4);
}

// Korthikanti et al. 2022, section 4, per layer: sbh(34 + 5as/h) without parallelism;
// sbh(10 + 24/t + 5as/(ht)) with TP; sbh/t (34 + 5as/h) with TP and sequence parallelism;
// 34 sbh/t with selective recompute; 2sbh/t with full recompute.
TEST(CostModel, ActivationsMatchKorthikantiSection4) {
  const ModelShape m = preset_model("gpt3-175b");
  const double s = 2048, b = 2, h = 12288, a = 96, t = 8;
  const Job j = job(2048, 16);
  const double sbh = s * b * h;
  Layout l = layout(1, 1, 1, 2, 8);
  EXPECT_DOUBLE_EQ(stored_activation_bytes(m, j, l, 0), sbh * (34 + 5 * a * s / h));
  l = layout(8, 1, 1, 2, 8);
  l.sequence_parallel = false;
  EXPECT_DOUBLE_EQ(stored_activation_bytes(m, j, l, 0), sbh * (10 + 24 / t + 5 * a * s / (h * t)));
  l.sequence_parallel = true;
  EXPECT_DOUBLE_EQ(stored_activation_bytes(m, j, l, 0), sbh / t * (34 + 5 * a * s / h));
  l.recompute = Recompute::selective;
  EXPECT_DOUBLE_EQ(stored_activation_bytes(m, j, l, 0), sbh / t * 34);
  l.recompute = Recompute::full;
  EXPECT_DOUBLE_EQ(stored_activation_bytes(m, j, l, 0), 2 * sbh / t);
}

// The first pipeline stage holds p micro-batches of L/p layers: L layers' worth, plus the
// embedding dropout mask sbhp/t (Korthikanti eq. 5).
TEST(CostModel, FirstStageHoldsAllLayersWorthUnder1F1B) {
  const ModelShape m = preset_model("gpt3-175b");
  const double s = 2048, b = 1, h = 12288, t = 8, p = 8;
  const Cluster cluster = make_cluster(64, 8, gpu_by_name("a100-80"));
  Layout l = layout(8, 8, 1, 1, 64, Recompute::selective);
  const auto mem = rank_memory(m, job(2048, 64), cluster, l, 0);
  EXPECT_DOUBLE_EQ(mem.activations, 96 * s * b * h * 34 / t + s * b * h * p / t);
  // Interleaving with v chunks multiplies it by 1 + (p - 1)/(p v).
  l.vpp = 2;
  const auto interleaved = rank_memory(m, job(2048, 64), cluster, l, 0);
  EXPECT_DOUBLE_EQ(interleaved.activations - s * b * h * (p + (p - 1) / 2) / t,
                   96 * s * b * h * 34 / t * (1 + (p - 1) / (p * 2)));
}

TEST(CostModel, FlashAttentionDropsTheQuadraticTerm) {
  const ModelShape m = preset_model("llama3-8b");
  const Job j = job(8192, 8);
  const Layout l = layout(1, 1, 1, 1, 8);
  // bf16: two norm inputs, QKV input, MLP input (4 x 2h), Q and K (2(h + h/4)), V (2 h/4), the
  // attention output (2h), fp32 log-sum-exp (4 a), SwiGLU gate, up and product (3 x 2f).
  const double h = 4096, f = 14336, a = 32;
  const double per_token = 8 * h + 2 * (h + h / 4) + 2 * h / 4 + 2 * h + 4 * a + 6 * f;
  EXPECT_DOUBLE_EQ(stored_activation_bytes(m, j, l, 0), 8192 * per_token);
}

TEST(CostModel, BlockDiffusionDoublesTheSequence) {
  const ModelShape m = preset_model("llama3-8b");
  Job ar = job(2048, 8);
  Job diffusion = ar;
  diffusion.objective = Objective::diffusion;
  const Layout l = layout(1, 1, 1, 1, 8);
  EXPECT_DOUBLE_EQ(stored_activation_bytes(m, diffusion, l, 0),
                   2 * stored_activation_bytes(m, ar, l, 0));
  EXPECT_EQ(diffusion.tokens_per_step(), ar.tokens_per_step());
}

const CommEntry& entry(const CommVolume& v, const std::string& group, const std::string& op) {
  for (const auto& e : v.entries)
    if (e.group == group && e.op == op) return e;
  throw std::runtime_error("no " + group + " " + op);
}

TEST(CostModel, CommunicationFollowsTheConventions) {
  const ModelShape m = preset_model("llama3-8b");
  const double s = 4096, b = 1, h = 4096, mbs = 8;
  Layout l = layout(4, 2, 2, 1, 8);
  l.sequence_parallel = false;
  const Job j = job(4096, 16);
  const auto v = rank_communication(m, j, l, 0);
  // TP: 4 collectives of s*b*h (bf16) per layer per micro-batch; stage 0 has 16 layers; a ring
  // all-reduce sends 2(t-1)/t of its buffer.
  const auto& tp = entry(v, "tp", "all_reduce");
  EXPECT_EQ(tp.count, 4 * 16 * 8);
  EXPECT_DOUBLE_EQ(tp.bytes_per_rank, 2.0 * 3 / 4 * 4 * 16 * mbs * s * b * h * 2);
  // PP: stage 0 sends one activation per micro-batch, receives the gradient: s*b*h each way.
  const auto& pp = entry(v, "pp", "p2p");
  EXPECT_DOUBLE_EQ(pp.bytes_per_rank, mbs * s * b * h * 2);
  // DP: ring all-reduce moves 2(d-1)/d of this rank's fp32 gradients.
  const auto params = rank_parameters(m, l, 0);
  EXPECT_DOUBLE_EQ(entry(v, "dp", "all_reduce").bytes_per_rank, 2 * 0.5 * params.dense * 4);
  l.zero1 = true;
  const auto z = rank_communication(m, j, l, 0);
  EXPECT_DOUBLE_EQ(entry(z, "dp", "reduce_scatter").bytes_per_rank, 0.5 * params.dense * 4);
  EXPECT_DOUBLE_EQ(entry(z, "dp", "all_gather").bytes_per_rank, 0.5 * params.dense * 2);
}

TEST(CostModel, ExpertAllToAllAndExpertGradientGroup) {
  const ModelShape m = preset_model("mixtral-8x7b");
  Layout l = layout(1, 1, 8, 1, 4);
  l.ep = 8;
  const Job j = job(4096, 32);
  const auto v = rank_communication(m, j, l, 0);
  // 2 forward + 2 backward all-to-alls of tokens*k*h per MoE layer, minus the local share.
  const auto& ep = entry(v, "ep", "all_to_all");
  EXPECT_EQ(ep.count, 4 * 32 * 4);
  EXPECT_DOUBLE_EQ(ep.bytes_per_rank, 4 * 32 * 4 * (4096.0 * 2 * 4096 * 2) * 7 / 8);
  // Expert gradients reduce over tp*dp/(ep*etp) = 1 rank here: no edp traffic at all.
  for (const auto& e : v.entries) EXPECT_NE(e.group, "edp");
  l.ep = 4;
  const auto w = rank_communication(m, j, l, 0);
  const auto params = rank_parameters(m, l, 0);
  EXPECT_DOUBLE_EQ(entry(w, "edp", "all_reduce").bytes_per_rank, 2 * 0.5 * params.expert * 4);
  EXPECT_EQ(entry(w, "edp", "all_reduce").group_size, 2);
}

// Whole experts over the TP group (metamorph's tp2 etp1 ep2, no sequence parallelism): no
// all-to-all, the MoE layers' outputs and input gradients summed by the TP all-reduce as under
// etp = tp (and the routers' gradients once a step), each rank holding E/tp whole experts whose
// gradients reduce over DP.
TEST(CostModel, ExpertsOverTheTpGroupMoveNoRows) {
  const ModelShape m = preset_model("mixtral-8x7b");
  const Job j = job(4096, 32);
  Layout split = layout(2, 1, 2, 1, 16);
  split.etp = 2;
  split.sequence_parallel = false;  // metamorph's runtime
  Layout whole = split;
  whole.etp = 1;
  whole.ep = 2;
  ASSERT_TRUE(whole.experts_over_tp());
  EXPECT_EQ(whole.expert_dp(), 2);
  EXPECT_EQ(layout_problem(m, j, make_cluster(4, 8, gpu_by_name("h100")), whole), "");
  const auto a = rank_communication(m, j, split, 0), b = rank_communication(m, j, whole, 0);
  for (const auto& e : b.entries) EXPECT_FALSE(e.group == "ep" && e.op == "all_to_all");
  EXPECT_EQ(entry(b, "tp", "all_reduce").count, entry(a, "tp", "all_reduce").count);
  EXPECT_DOUBLE_EQ(b.bytes("tp"), a.bytes("tp"));
  // The same expert bytes per rank (E/2 whole experts or halves of all E), reduced over DP.
  const auto pa = rank_parameters(m, split, 0), pb = rank_parameters(m, whole, 0);
  EXPECT_DOUBLE_EQ(pb.expert, pa.expert);
  EXPECT_DOUBLE_EQ(entry(b, "edp", "all_reduce").bytes_per_rank,
                   entry(a, "edp", "all_reduce").bytes_per_rank);
  // With sequence parallelism (Megatron-Core) the same sizes are an ordinary EP group.
  whole.sequence_parallel = true;
  EXPECT_FALSE(whole.experts_over_tp());
}

// The backward's TP all-reduces run beside the weight-gradient GEMMs of the projections that
// formed the summed input gradient (q/k/v/o for attention, gate/up for the MLP, the LM head's
// own): each costs max(0, all-reduce - those GEMMs). The forward's stay whole.
TEST(CostModel, BackwardTpAllReducesHideBehindWeightGradients) {
  const ModelShape m = preset_model("llama3-8b");  // h 4096, q 4096, kv 1024, ffn 14336
  const double h = 4096, t = 2, tokens = 4096, mbs = 4, layers = 32;
  const Job j = job(4096, 4);
  Layout l = layout(2, 1, 1, 1, 4);
  l.sequence_parallel = false;
  auto tp_seconds = [&](double nvlink_gbs, double overlap) {
    GpuSpec gpu = gpu_by_name("h100");
    gpu.nvlink_gbs = nvlink_gbs;
    Calibration c;
    c.tp_backward_overlap = overlap;
    return step_time(m, j, make_cluster(2, 2, gpu, c), l).tp_comm;
  };
  auto all_reduce = [&](double nvlink_gbs) {
    GpuSpec gpu = gpu_by_name("h100");
    gpu.nvlink_gbs = nvlink_gbs;
    return collective_seconds(make_cluster(2, 2, gpu), Collective::all_reduce, tokens * h * 2, 2,
                              2);
  };
  // A fast link: every backward all-reduce (2 per layer and the LM head's) hides entirely.
  const double fast = 1e6;
  EXPECT_NEAR(tp_seconds(fast, 0) - tp_seconds(fast, 1), mbs * (2 * layers + 1) * all_reduce(fast),
              1e-9 * tp_seconds(fast, 0));
  // A slow link: the weight-gradient GEMMs' time is what each backward all-reduce saves.
  const double slow = 1;
  const GpuSpec h100 = gpu_by_name("h100");
  const double peak = h100.peak_tflops * 1e12;
  const double dense_eff = gemm_efficiency({}, h100, tokens, 4096 / t, h);
  const double head_eff = gemm_efficiency({}, h100, tokens, 128256 / t, h);
  const double attention = 2 * tokens * h * (2 * 4096 + 2 * 1024) / t / (peak * dense_eff);
  const double mlp = 2 * tokens * h * 2 * 14336 / t / (peak * dense_eff);
  const double head = 2 * tokens * h * 128256 / t / (peak * head_eff);
  ASSERT_GT(all_reduce(slow), head);
  EXPECT_NEAR(tp_seconds(slow, 0) - tp_seconds(slow, 1), mbs * (layers * (attention + mlp) + head),
              1e-9 * tp_seconds(slow, 0));
  // Megatron's sequence parallelism (reduce-scatter and all-gather) is charged whole.
  l.sequence_parallel = true;
  EXPECT_DOUBLE_EQ(tp_seconds(slow, 0), tp_seconds(slow, 1));
}

// An MoE layer's input-gradient all-reduce runs beside its routed experts' gate/up weight
// gradients (two thirds of their forward GEMMs) and the router's.
TEST(CostModel, MoeBackwardTpAllReduceHidesBehindExpertAndRouterWeightGradients) {
  const ModelShape m = preset_model("mixtral-8x7b");  // h 4096, 8 experts top-2, f_e 14336
  const double h = 4096, t = 2, tokens = 4096, mbs = 4, layers = 32;
  const Job j = job(4096, 4);
  Layout l = layout(2, 1, 1, 1, 4);
  l.sequence_parallel = false;
  l.etp = 2;
  GpuSpec gpu = gpu_by_name("h100");
  gpu.nvlink_gbs = 1;  // a slow link: every window is smaller than its all-reduce
  auto tp_seconds = [&](double overlap) {
    Calibration c;
    c.tp_backward_overlap = overlap;
    return step_time(m, j, make_cluster(2, 2, gpu, c), l).tp_comm;
  };
  const double peak = gpu.peak_tflops * 1e12;
  const double dense_eff = gemm_efficiency({}, gpu, tokens, 4096 / t, h);
  const double head_eff = gemm_efficiency({}, gpu, tokens, 32000 / t, h);
  // 4096 tokens x top-2 over 8 experts: 1024 rows per expert, each rank a 7168-wide slice.
  const double expert_eff = gemm_efficiency({}, gpu, 1024, 14336 / t, h);
  const double attention = 2 * tokens * h * (2 * 4096 + 2 * 1024) / t / (peak * dense_eff);
  const double experts = 2 * tokens * h * 2 * 14336 * 2 / t / (peak * expert_eff);
  const double router = 2 * tokens * h * 8 / (peak * dense_eff);
  const double head = 2 * tokens * h * 32000 / t / (peak * head_eff);
  EXPECT_NEAR(tp_seconds(0) - tp_seconds(1), mbs * (layers * (attention + experts + router) + head),
              1e-9 * tp_seconds(0));
}

// Interleaved pairs (train --interleave-pairs): each micro-batch's TP all-reduces run while the
// other micro-batch computes its next phase, so each costs max(0, all-reduce - that phase) on top
// of what its own weight gradients hide; tp_overlap_interference of the hidden time still costs.
TEST(CostModel, InterleavedPairsHideTpAllReducesBehindTheOtherMicroBatch) {
  const ModelShape m = preset_model("llama3-8b");  // h 4096, q 4096, kv 1024, ffn 14336
  const double h = 4096, t = 2, tokens = 4096, layers = 32;
  auto tp_seconds = [&](int64_t mbs, bool pairs, double nvlink_gbs, double overlap,
                        double interference) {
    GpuSpec gpu = gpu_by_name("h100");
    gpu.nvlink_gbs = nvlink_gbs;
    Calibration c;
    c.tp_backward_overlap = overlap;
    c.tp_overlap_interference = interference;
    Layout l = layout(2, 1, 1, 1, mbs);
    l.sequence_parallel = false;
    l.interleave_pairs = pairs;
    return step_time(m, job(4096, mbs), make_cluster(2, 2, gpu, c), l).tp_comm;
  };
  auto all_reduce = [&](double nvlink_gbs) {
    GpuSpec gpu = gpu_by_name("h100");
    gpu.nvlink_gbs = nvlink_gbs;
    return collective_seconds(make_cluster(2, 2, gpu), Collective::all_reduce, tokens * h * 2, 2,
                              2);
  };
  const auto saved = [&](int64_t mbs, double nvlink_gbs, double overlap, double interference) {
    return tp_seconds(mbs, false, nvlink_gbs, overlap, interference) -
           tp_seconds(mbs, true, nvlink_gbs, overlap, interference);
  };
  // A fast link: the forward's all-reduces hide whole but the last layer's second one (4L - 1 a
  // pair); the backward's already hide behind their own weight gradients, or without those
  // behind the other micro-batch's phase (4L - 1 more: the first layer's last one waits).
  const double fast = 1e6, ar = all_reduce(fast);
  EXPECT_NEAR(saved(4, fast, 1, 0), 2 * (4 * layers - 1) * ar, 1e-6 * ar);
  EXPECT_NEAR(saved(4, fast, 0, 0), 2 * (8 * layers - 2) * ar, 1e-6 * ar);
  EXPECT_NEAR(saved(4, fast, 1, 0.75), 0.25 * 2 * (4 * layers - 1) * ar, 1e-6 * ar);
  EXPECT_NEAR(saved(4, fast, 1, 1), 0, 1e-6 * ar);
  // An odd last micro-batch runs alone: five hide what four do.
  EXPECT_NEAR(saved(5, fast, 1, 0), 2 * (4 * layers - 1) * ar, 1e-6 * ar);
  // A slow link: each hidden all-reduce saves the other micro-batch's phase. Per pair: forward
  // (2L - 1) attention and 2L FFN phases, backward (twice the forward) (2L - 1) FFN and 2L
  // attention phases.
  const double slow = 1;
  const GpuSpec h100 = gpu_by_name("h100");
  const double peak = h100.peak_tflops * 1e12;
  const double dense_eff = gemm_efficiency({}, h100, tokens, 4096 / t, h);
  const double attention = 2 * tokens * h * (2 * 4096 + 2 * 1024) / t / (peak * dense_eff) +
                           4.0 * 4096 * 4096 * tokens / t / (peak * h100.attention_efficiency);
  const double mlp = 2 * tokens * h * 3 * 14336 / t / (peak * dense_eff);
  ASSERT_GT(all_reduce(slow), 2 * mlp);
  const double pair = (2 * layers - 1) * attention + 2 * layers * mlp +
                      2 * ((2 * layers - 1) * mlp + 2 * layers * attention);
  EXPECT_NEAR(saved(4, slow, 0, 0), 2 * pair, 1e-9 * tp_seconds(4, false, slow, 0, 0));
}

// Two micro-batches' activations at once; the logits (the heads run one after the other) once.
TEST(CostModel, InterleavedPairsHoldTwoMicroBatchesActivations) {
  const ModelShape m = preset_model("llama3-8b");
  const Cluster cluster = make_cluster(2, 2, gpu_by_name("h200"));
  Layout l = layout(2, 1, 1, 2, 4);
  l.sequence_parallel = false;
  Layout paired = l;
  paired.interleave_pairs = true;
  Job j = job(4096, 8);
  // Korthikanti's accounting: one more micro-batch's stored activations.
  double stored = 0;
  for (int64_t i = 0; i < m.layers; ++i) stored += stored_activation_bytes(m, j, l, i);
  EXPECT_NEAR(rank_memory(m, j, cluster, paired, 0).activations -
                  rank_memory(m, j, cluster, l, 0).activations,
              stored, 1e-9 * stored);
  // metamorph's: one more micro-batch's kept tensors and RoPE positions, the second pass's
  // final-norm tensors and the first pass's head gradient waiting.
  j.accounting = ActivationAccounting::metamorph;
  const double tokens = 2.0 * 4096, ab = 2, h = 4096;
  double kept = 0;
  for (int64_t i = 0; i < m.layers; ++i) kept += metamorph_layer_bytes_per_token(m, j, l, i);
  const double pending = 2 * ab * h + 4;
  EXPECT_NEAR(rank_memory(m, j, cluster, paired, 0).activations -
                  rank_memory(m, j, cluster, l, 0).activations,
              tokens * (kept + pending + ab * h) + 4.0 * 4096, 1.0);
  // The pair costs more memory, and (default calibration) less time.
  EXPECT_GT(rank_memory(m, j, cluster, paired, 0).total(),
            rank_memory(m, j, cluster, l, 0).total());
  EXPECT_LT(step_time(m, j, cluster, paired).total(), step_time(m, j, cluster, l).total());
}

TEST(CostModel, BubbleIsPMinusOneOverMAndShrinksWithInterleaving) {
  const ModelShape m = preset_model("llama3-70b");
  const Cluster cluster = make_cluster(64, 8, gpu_by_name("h100"));
  const Job j = job(4096, 64);
  Layout l = layout(8, 8, 1, 1, 64);
  const StepTime plain = step_time(m, j, cluster, l);
  const double per_mb = (plain.compute + plain.tp_comm + plain.pp_p2p) / 64;
  EXPECT_NEAR(plain.pp_bubble, 7 * per_mb, 1e-9 * plain.pp_bubble);
  l.vpp = 2;
  const StepTime interleaved = step_time(m, j, cluster, l);
  EXPECT_LT(interleaved.pp_bubble, 0.6 * plain.pp_bubble);
}

// The worst case a rank's experts can receive: min(k, local experts) rows of every token of the
// EP group, or under a capacity factor the local experts' capacity.
TEST(CostModel, WorstCaseRoutingBoundsTheRowsARankReceives) {
  ModelShape m = preset_model("mixtral-8x7b");  // 8 experts, top-2
  Layout l = layout(1, 1, 8, 1, 4);
  l.ep = 4;  // 2 local experts
  EXPECT_DOUBLE_EQ(worst_case_routing(m, job(4096, 32), l).received, 4.0);
  l.ep = 8;  // 1 local expert: at most one row per token
  EXPECT_DOUBLE_EQ(worst_case_routing(m, job(4096, 32), l).received, 4.0);
  m.capacity_factor = 1.25;  // capacity ceil(1.25 x 4096 x 8 x 2 / 8) = 10240 rows per expert
  EXPECT_DOUBLE_EQ(worst_case_routing(m, job(4096, 32), l).received, 10240.0 / (4096 * 2));
  EXPECT_DOUBLE_EQ(worst_case_routing(m, job(4096, 32), l).sent, 1.0);

  // The planner sizes each layout for it on request (metamorph accounting), above uniform.
  Job j = job(4096, 32);
  j.accounting = ActivationAccounting::metamorph;
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  const double uniform = rank_memory(m, j, cluster, l, 0).activations;
  j.worst_case_routing = true;
  EXPECT_GT(rank_memory(m, j, cluster, l, 0).activations, uniform * 1.1);
}

// A rank that runs two or more experts of an MoE layer holds three more 32 MiB cuBLASLt
// workspaces (the GPU backend's four expert streams); one expert per rank, or a dense model, none.
TEST(CostModel, ExpertStreamWorkspacesWhereARankRunsSeveralExperts) {
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  const double lump = cluster.calibration.workspace_gib * (1 << 30);
  const double streams = 3.0 * (32 << 20);
  const ModelShape moe = preset_model("mixtral-8x7b");  // 8 experts
  for (ActivationAccounting accounting :
       {ActivationAccounting::megatron, ActivationAccounting::metamorph}) {
    Job j = job(4096, 32);
    j.accounting = accounting;
    Layout l = layout(1, 1, 8, 1, 4);
    EXPECT_DOUBLE_EQ(rank_memory(moe, j, cluster, l, 0).workspace, lump + streams);
    l.ep = 4;  // 2 local experts
    EXPECT_DOUBLE_EQ(rank_memory(moe, j, cluster, l, 0).workspace, lump + streams);
    l.ep = 8;  // 1 local expert: its GEMMs stay on the compute stream
    EXPECT_DOUBLE_EQ(rank_memory(moe, j, cluster, l, 0).workspace, lump);
    EXPECT_DOUBLE_EQ(
        rank_memory(preset_model("llama3-8b"), j, cluster, layout(1, 1, 8, 1, 4), 0).workspace,
        lump);
  }
}

// The GPU attention backward's scratch (metamorph accounting): cuDNN's deterministic graph keeps
// a dQ partial per block of keys, the figures cudnn_probe printed for cuDNN 9.19 on an H100 (its
// plan's workspace less cuDNN's own 256 bytes), plus the f32 softmax sum per row and head the
// backward takes beside it; the atomic graph's workspace of one f32 dQ and our f32 dQ accumulator
// for it; block diffusion's two causal calls over half its rows and the scratch for their
// gradients; none on the CPU (f32), at head_dim 96, or on metamorph's kernels.
TEST(CostModel, CudnnAttentionScratchFollowsWhatCudnnPlanned) {
  ModelShape m = load_model_shape(std::string(METAMORPH_CONFIGS_DIR) + "/llama-1b.json");
  ASSERT_EQ(m.head_dim, 64);
  ASSERT_EQ(m.heads, 32);
  Job j = job(4096, 8);
  j.accounting = ActivationAccounting::metamorph;
  const Layout l = layout(1, 1, 1, 2, 4);
  const double tokens = 2 * 4096;
  EXPECT_EQ(attention_scratch_bytes_per_token(m, j, l), 0.0) << "default: none";
  j.attention_scratch = AttentionScratch::cudnn_deterministic;
  const double softmax_sum = 4.0 * 32 * tokens;
  EXPECT_DOUBLE_EQ(attention_scratch_bytes_per_token(m, j, l) * tokens,
                   2214592768.0 - 256 + softmax_sum);
  Layout tp2 = l;
  tp2.tp = 2;
  EXPECT_DOUBLE_EQ(attention_scratch_bytes_per_token(m, j, tp2) * tokens,
                   (2214592768.0 - 256 + softmax_sum) / 2);
  ModelShape d128 = m;
  d128.heads = 16;
  d128.kv_heads = 4;
  d128.head_dim = 128;
  EXPECT_DOUBLE_EQ(attention_scratch_bytes_per_token(d128, j, l) * tokens,
                   1140850944.0 - 256 + 4.0 * 16 * tokens);
  j.attention_scratch = AttentionScratch::cudnn_atomic;
  EXPECT_DOUBLE_EQ(attention_scratch_bytes_per_token(m, j, l) * tokens,
                   2 * (67109120.0 - 256) + softmax_sum);
  const double with_atomic = metamorph_rank_memory(m, j, l, 0).total();
  j.attention_scratch = AttentionScratch::cudnn_deterministic;
  const double with_deterministic = metamorph_rank_memory(m, j, l, 0).total();
  j.attention_scratch = AttentionScratch::none;
  const double without = metamorph_rank_memory(m, j, l, 0).total();
  // The scratch adds to the attention backward's transient, which the loss's f32 logits (vocab
  // 32000) exceed with the small one: the peak rises by at most the scratch, and by most of the
  // large one.
  EXPECT_GE(with_atomic, without);
  EXPECT_LE(with_deterministic - without, 2214592768.0 - 256 + softmax_sum);
  EXPECT_GT(with_deterministic - without, 0.4 * (2214592768.0 - 256));
  j.attention_scratch = AttentionScratch::cudnn_deterministic;
  // Block diffusion over [x_t ; x_0] of 2 x 2048: cuDNN's larger call covers the 2048 clean rows
  // (blocks of 128 keys: 16 + 1 f32 dQ of 2048 rows, per token of 4096 a half), beside bf16 dQ,
  // dK, dV (q width 2048, kv width 256) and an f32 lse per head.
  Job diffusion = job(2048, 8);
  diffusion.accounting = ActivationAccounting::metamorph;
  diffusion.objective = Objective::diffusion;
  diffusion.attention_scratch = AttentionScratch::cudnn_deterministic;
  EXPECT_DOUBLE_EQ(attention_scratch_bytes_per_token(m, diffusion, l),
                   2.0 * (2048 + 2 * 256) + 4.0 * 32 + (4.0 * 2048 * 17 + 4.0 * 32) / 2);
  diffusion.attention_scratch = AttentionScratch::none;
  EXPECT_EQ(attention_scratch_bytes_per_token(m, diffusion, l), 0.0);
  Job f32 = j;
  set_precision(f32, "fp32");
  EXPECT_EQ(attention_scratch_bytes_per_token(m, f32, l), 0.0);
  ModelShape d96 = m;
  d96.head_dim = 96;
  EXPECT_EQ(attention_scratch_bytes_per_token(d96, j, l), 0.0);
  EXPECT_EQ(parse_attention_scratch("cudnn"), AttentionScratch::cudnn_atomic);
  EXPECT_EQ(parse_attention_scratch("kernels"), AttentionScratch::none);
  EXPECT_THROW(parse_attention_scratch("flash"), InputError);
}

// A skewed router's busiest EP rank sets the pace: its load scales the routed experts' compute
// (linearly), and leaves a layout that holds every expert on each rank alone.
// The loss is priced as the runtime runs it under its own accounting: the bf16 logits read
// forward, read and their gradient written backward (6 bytes a logit); Megatron-LM's upcast loss
// at 6 f32 passes (24 bytes). The LM head's GEMM efficiency does not change with the vocabulary
// here (the fitted curve goes by the smallest dimension, the hidden size).
TEST(CostModel, LossBytesPerLogitFollowTheAccounting) {
  const Cluster cluster = make_cluster(1, 1, gpu_by_name("h100"));
  const double tokens = 4096, mbs = 2, extra_vocab = 32000, h = 4096;
  auto compute = [&](ActivationAccounting accounting, int64_t vocab) {
    ModelShape m = preset_model("llama3-8b");
    m.vocab_size = vocab;
    Job j = job(4096, 2);
    j.accounting = accounting;
    return step_time(m, j, cluster, layout(1, 1, 1, 1, 2)).compute;
  };
  const GpuSpec& gpu = cluster.gpu;
  const double head_eff = gemm_efficiency({}, gpu, tokens, 64000, h);
  const double head = mbs * 3 * 2 * tokens * h * extra_vocab / (gpu.peak_tflops * 1e12 * head_eff);
  const auto loss = [&](double bytes) {
    return mbs * bytes * tokens * extra_vocab / (gpu.memory_bw_gbs * 1e9);
  };
  const auto grown = [&](ActivationAccounting a) { return compute(a, 64000) - compute(a, 32000); };
  EXPECT_NEAR(grown(ActivationAccounting::metamorph), head + loss(6), 1e-9 * head);
  EXPECT_NEAR(grown(ActivationAccounting::megatron), head + loss(24), 1e-9 * head);
}

// The update streams 38 bytes a local parameter: the gradient norm's read of the f32 gradients,
// AdamW's read and zeroing of them, its read and write of the masters and both moments, the bf16
// weights written.
TEST(CostModel, OptimizerStreamsEachLocalParameterOnce) {
  const ModelShape m = preset_model("llama3-8b");
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  Layout l = layout(2, 1, 4, 1, 8);
  const RankParameters p = rank_parameters(m, l, 0);
  EXPECT_NEAR(step_time(m, job(4096, 32), cluster, l).optimizer,
              (p.dense + p.expert) * 38 / (cluster.gpu.memory_bw_gbs * 1e9), 1e-15);
  l.zero1 = true;
  EXPECT_NEAR(step_time(m, job(4096, 32), cluster, l).optimizer,
              (p.dense + p.expert) / 4 * 38 / (cluster.gpu.memory_bw_gbs * 1e9), 1e-15);
}

TEST(CostModel, ExpertLoadScalesTheRoutedExpertsComputeUnderEp) {
  const ModelShape m = preset_model("mixtral-8x7b");
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  auto compute = [&](const Layout& l, double load) {
    Job j = job(4096, 32);
    j.expert_load = load;
    return step_time(m, j, cluster, l).compute;
  };
  Layout ep = layout(1, 1, 8, 1, 4);
  ep.ep = 4;
  const double balanced = compute(ep, 1.0), doubled = compute(ep, 2.0);
  EXPECT_GT(doubled, balanced * 1.2);  // the experts are most of Mixtral's FLOPs
  EXPECT_NEAR(compute(ep, 1.5) - balanced, 0.5 * (doubled - balanced), 1e-9 * balanced);
  const Layout dense = layout(1, 1, 8, 1, 4);  // ep 1: every expert on every rank
  EXPECT_DOUBLE_EQ(compute(dense, 2.0), compute(dense, 1.0));

  // Its experts' activations grow with the rows they receive (metamorph accounting).
  auto activations = [&](const Layout& l, double load) {
    Job j = job(4096, 32);
    j.accounting = ActivationAccounting::metamorph;
    j.expert_load = load;
    return rank_memory(m, j, cluster, l, 0).activations;
  };
  EXPECT_GT(activations(ep, 1.5), activations(ep, 1.0) * 1.1);
  EXPECT_DOUBLE_EQ(activations(dense, 1.5), activations(dense, 1.0));
}

// metamorph's runtime overlaps plain DP's all-reduce with the last backward but runs ZeRO-1's
// reduce-scatter and all-gather between steps: under its accounting they are exposed in full;
// Megatron's distributed optimizer hides them behind backward and forward.
// metamorph's runtime overlaps ZeRO-1's reduce-scatter with the last backward and its
// all-gather with the next forward, except under TP with QK-norm or MoE (TP sums router and
// norm gradients after the backward), where both run in full.
TEST(CostModel, ZeroOneCommunicationOverlapsInMetamorphsRuntimeExceptUnderTpWithMoe) {
  const Cluster cluster = make_cluster(8, 8, gpu_by_name("h100"));
  auto exposed = [&](const ModelShape& m, Layout l, ActivationAccounting accounting, bool zero1) {
    Job j = job(4096, 32);
    j.accounting = accounting;
    l.zero1 = zero1;
    return step_time(m, j, cluster, l).dp_exposed;
  };
  const ModelShape dense = preset_model("llama3-8b");
  const Layout dp8 = layout(1, 1, 8, 1, 4);
  EXPECT_DOUBLE_EQ(exposed(dense, dp8, ActivationAccounting::megatron, true), 0.0);
  EXPECT_DOUBLE_EQ(exposed(dense, dp8, ActivationAccounting::metamorph, false), 0.0);
  EXPECT_DOUBLE_EQ(exposed(dense, dp8, ActivationAccounting::metamorph, true), 0.0);

  const ModelShape moe = preset_model("mixtral-8x7b");
  Layout tp2 = layout(2, 1, 4, 1, 4);
  tp2.zero1 = true;
  const RankParameters n = rank_parameters(moe, tp2, 0);
  const Job j = job(4096, 32);
  double serial = 0;
  for (const auto& [size, count] : {std::pair{tp2.dp, n.dense}, {tp2.expert_dp(), n.expert}}) {
    if (size <= 1 || count <= 0) continue;
    serial +=
        collective_seconds(cluster, Collective::reduce_scatter, count * j.grad_bytes, size, 8) +
        collective_seconds(cluster, Collective::all_gather, count * j.weight_bytes, size, 8);
  }
  EXPECT_GT(serial, 0.0);
  EXPECT_NEAR(exposed(moe, tp2, ActivationAccounting::metamorph, true), serial, 1e-9 * serial);
  EXPECT_LT(exposed(moe, tp2, ActivationAccounting::megatron, true), serial);
}

// A DP group with all 8 GPUs of each node (TP 1) reduces within the node over NVLink, then each
// member carries 1/8 of the message across nodes through its own NIC; a group with one member
// per node (TP 8) uses the flat ring over the NICs.
TEST(CostModel, CrossNodeRingCollectivesUseEveryNicOfTheNode) {
  const Cluster c = make_cluster(32, 8, gpu_by_name("a100-80"));
  const Calibration cal;
  const double bytes = 1e9, nic = 25e9 * cal.network_efficiency;
  const double nvlink = 300e9 * cal.nvlink_efficiency;
  const double latency = cal.collective_latency_s * 6;  // log2(32) + 1 steps
  EXPECT_NEAR(collective_seconds(c, Collective::all_reduce, bytes, 32, 32),
              latency + 2.0 * 7 / 8 * bytes / nvlink + bytes / 8 * 2.0 * 3 / 4 / nic, 1e-9);
  const double latency4 = cal.collective_latency_s * 3;
  EXPECT_NEAR(collective_seconds(c, Collective::all_reduce, bytes, 4, 32),
              latency4 + 2.0 * 3 / 4 * bytes / nic, 1e-9);
}

// Consecutive TP groups that do not tile a node would straddle two nodes.
TEST(CostModel, TpThatDoesNotDivideTheNodeIsRefused) {
  const ModelShape m = preset_model("gpt3-175b");  // 96 heads: TP 6 divides them
  Layout l = layout(6, 8, 1, 1, 8);
  EXPECT_NE(layout_problem(m, job(2048, 8), make_cluster(48, 8, gpu_by_name("a100-80")), l)
                .find("straddle two nodes"),
            std::string::npos);
  l = layout(6, 1, 1, 1, 8);  // one node of 6 GPUs: no straddling
  EXPECT_EQ(layout_problem(m, job(2048, 8), make_cluster(6, 6, gpu_by_name("a100-80")), l), "");
}

}  // namespace
}  // namespace metamorph::planner

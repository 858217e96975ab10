#include "planner/cost_model.hpp"

#include <algorithm>
#include <cmath>

#include "planner/runtime_memory.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::planner {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double real(int64_t value) {
  return static_cast<double>(value);
}

int64_t tokens_per_micro_batch(const Job& job, const Layout& layout) {
  return job.network_seq() * layout.micro_batch;
}

// Per-token activation bytes of a layer, split into the terms Korthikanti et al. leave
// replicated across TP ranks without sequence parallelism and those TP always divides.
struct ActivationTerms {
  double replicated = 0;
  double parallel = 0;
  double scores =
      0;  // the s x s attention terms inside `parallel` (selective recompute drops them)
};

ActivationTerms activation_terms(const ModelShape& m, const Job& job, const Layout& layout,
                                 int64_t layer) {
  const double ab = job.activation_bytes;
  const double h = real(m.hidden);
  const double s = real(job.network_seq());
  ActivationTerms t;
  // Two norm inputs, the QKV input, the MLP input, and (GPT style) the two dropout masks.
  t.replicated = 2 * ab * h + ab * h + ab * h + (m.dropout ? 2 * h : 0);
  // Q and K (after RoPE), V, the attention output feeding the output projection.
  t.parallel = ab * (real(m.attention_width()) + real(m.kv_width())) + ab * real(m.kv_width()) +
               ab * real(m.attention_width());
  if (m.flash_attention) {
    t.scores = 4.0 * real(m.heads);  // fp32 log-sum-exp per head
  } else {
    // Softmax output, and with dropout its mask and the dropped-out copy.
    t.scores = real(m.heads) * s * (ab + (m.dropout ? 1 + ab : 0));
  }
  t.parallel += t.scores;
  const double act_tensors = m.gated_mlp ? 3 : 2;  // gate, up, product | pre- and post-GELU
  if (m.layer_is_moe(layer)) {
    const double k = real(m.top_k);
    const double etp = layout.etp;
    // Router logits and probabilities (fp32), the permuted expert inputs and outputs (an
    // expert-TP group sees all of its tokens), the expert intermediates, shared experts.
    t.parallel += 2 * 4.0 * real(m.num_experts) + 2 * k * ab * h * etp +
                  k * act_tensors * ab * real(m.moe_ffn) +
                  act_tensors * ab * real(m.shared_expert_ffn);
  } else {
    t.parallel += act_tensors * ab * real(m.ffn);
  }
  return t;
}

double per_rank(const Layout& layout, double tokens, double replicated, double parallel) {
  const double t = layout.tp;
  if (layout.sequence_parallel || layout.tp == 1) return tokens * (replicated + parallel) / t;
  return tokens * (replicated + parallel / t);
}

// Micro-batches whose activations a rank of `stage` holds at the 1F1B peak.
double in_flight(const Layout& l, int stage) {
  double held = 0;
  if (l.vpp == 1) {
    held = l.pp - stage;
  } else {
    // Interleaved warm-up: 2(p - i - 1) + (v - 1)p + 1 model chunks of 1/v of the stage.
    held = (2.0 * (l.pp - stage - 1) + real(l.vpp - 1) * l.pp + 1) / l.vpp;
  }
  return std::min(held, real(l.num_micro_batches));
}

double stage_expert_layers(const ModelShape& m, const StageShape& st) {
  double count = 0;
  for (int64_t i = st.first_layer; i < st.first_layer + st.num_layers; ++i)
    count += m.layer_is_moe(i) ? 1 : 0;
  return count;
}

// The GPU backend runs a rank's local experts on kExpertStreams CUDA streams at once, every stream
// past the first with a 32 MiB cuBLASLt workspace of its own, made only where a rank runs two or
// more experts of a layer (runtime/backends/cuda/cuda_expert_streams.hpp). Device memory beside
// the calibrated workspace lump (measured before the streams existed), so added to it.
double expert_stream_workspaces(const ModelShape& m, const Layout& l, int stage) {
  constexpr double kExpertStreams = 4, kGemmWorkspaceBytes = 32.0 * (1 << 20);
  if (!m.is_moe() || m.num_experts / l.ep < 2) return 0;
  if (stage_expert_layers(m, stage_shape(m, l, stage)) == 0) return 0;
  return (kExpertStreams - 1) * kGemmWorkspaceBytes;
}

}  // namespace

StageShape stage_shape(const ModelShape& model, const Layout& layout, int stage) {
  const int p = layout.pp;
  const int64_t base = model.layers / p;
  const int64_t extra = model.layers % p;
  const auto count = [&](int i) {
    const int order = i == 0 ? p - 1 : i - 1;  // stage 0 carries the embedding: extras last
    return base + (order < extra ? 1 : 0);
  };
  StageShape st;
  for (int i = 0; i < stage; ++i) st.first_layer += count(i);
  st.num_layers = count(stage);
  st.has_embedding = stage == 0;
  st.has_lm_head = stage == p - 1;
  return st;
}

RankParameters rank_parameters(const ModelShape& m, const Layout& layout, int stage) {
  const StageShape st = stage_shape(m, layout, stage);
  const ParameterCounts counts = count_parameters(m);
  RankParameters r;
  for (int64_t i = st.first_layer; i < st.first_layer + st.num_layers; ++i) {
    r.dense += real(non_expert_parameters_of_layer(m, i));
    r.expert += real(expert_parameters_of_layer(m, i));
  }
  if (st.has_embedding) r.dense += real(counts.embedding);
  if (st.has_lm_head) {
    r.dense += real(counts.lm_head + counts.final_norm);
    // A tied head on another stage keeps its own copy of the word embedding.
    if (m.tie_embeddings && layout.pp > 1) r.dense += real(m.vocab_size * m.hidden);
  }
  r.dense /= layout.tp;
  r.expert /= static_cast<double>(layout.ep) * layout.etp;
  return r;
}

double layer_activation_bytes(const ModelShape& m, const Job& job, const Layout& layout,
                              int64_t layer) {
  const auto terms = activation_terms(m, job, layout, layer);
  return per_rank(layout, real(tokens_per_micro_batch(job, layout)), terms.replicated,
                  terms.parallel);
}

double stored_activation_bytes(const ModelShape& m, const Job& job, const Layout& layout,
                               int64_t layer) {
  const double tokens = real(tokens_per_micro_batch(job, layout));
  const auto terms = activation_terms(m, job, layout, layer);
  switch (layout.recompute) {
    case Recompute::none:
      return per_rank(layout, tokens, terms.replicated, terms.parallel);
    case Recompute::selective:
      return per_rank(layout, tokens, terms.replicated, terms.parallel - terms.scores);
    case Recompute::full:
      // Only the layer input survives; with sequence parallelism it is split over TP.
      return per_rank(layout, tokens, job.activation_bytes * real(m.hidden), 0);
  }
  return 0;
}

MemoryBreakdown model_state_memory(const ModelShape& m, const Job& job, const Layout& l,
                                   int stage) {
  const RankParameters params = rank_parameters(m, l, stage);
  MemoryBreakdown mem;
  mem.weights = (params.dense + params.expert) * job.weight_bytes;
  mem.grads = (params.dense + params.expert) * job.grad_bytes;
  const double state = job.master_bytes + job.optimizer_state_bytes;
  mem.optimizer = params.dense * state / (l.zero1 ? l.dp : 1) +
                  params.expert * state / (l.zero1 ? l.expert_dp() : 1);
  return mem;
}

MemoryBreakdown rank_memory(const ModelShape& m, const Job& job, const Cluster& cluster,
                            const Layout& l, int stage) {
  if (job.accounting == ActivationAccounting::metamorph) {
    Job sized = job;
    if (job.worst_case_routing)
      sized.routing = worst_case_routing(m, job, l);
    else if (l.ep > 1)
      // The busiest EP rank's experts receive expert_load x their uniform rows; its peak is the
      // layout's. One rank holding every expert runs all rows whatever the routing.
      sized.routing.received *= job.expert_load;
    MemoryBreakdown mem = metamorph_rank_memory(m, sized, l, stage);
    mem.workspace =
        cluster.calibration.workspace_gib * kGiB + expert_stream_workspaces(m, l, stage);
    return mem;
  }
  const StageShape st = stage_shape(m, l, stage);
  MemoryBreakdown mem = model_state_memory(m, job, l, stage);

  // Interleaved pairs (one stage) keep two micro-batches' activations at once.
  const double held = l.interleave_pairs ? 2.0 : in_flight(l, stage);
  double per_micro_batch = 0;
  double largest_layer = 0;
  for (int64_t i = st.first_layer; i < st.first_layer + st.num_layers; ++i) {
    per_micro_batch += stored_activation_bytes(m, job, l, i);
    largest_layer = std::max(largest_layer, layer_activation_bytes(m, job, l, i));
  }
  const double tokens = real(tokens_per_micro_batch(job, l));
  const double split = l.sequence_parallel || l.tp == 1 ? l.tp : 1;
  mem.activations = held * per_micro_batch;
  // Full recompute rebuilds one layer at a time during backward.
  if (l.recompute == Recompute::full) mem.activations += largest_layer;
  if (st.has_embedding && m.dropout) mem.activations += held * tokens * real(m.hidden) / split;
  if (st.has_lm_head) {
    // Final norm input and head input (activation dtype), fp32 logits for the loss.
    mem.activations +=
        tokens * (2.0 * job.activation_bytes * real(m.hidden) + 4.0 * real(m.vocab_size)) / l.tp;
  }

  const double ab = job.activation_bytes;
  if (l.tp > 1) mem.comm_buffers += tokens * real(m.hidden) * ab;  // sequence-parallel all-gather
  if (l.ep > 1 && stage_expert_layers(m, st) > 0)
    mem.comm_buffers += 2.0 * tokens / l.tp * real(m.top_k) * l.etp * real(m.hidden) * ab;
  if (l.pp > 1) mem.comm_buffers += 2.0 * tokens * real(m.hidden) * ab / split;
  mem.workspace = cluster.calibration.workspace_gib * kGiB + expert_stream_workspaces(m, l, stage);
  return mem;
}

double CommVolume::bytes(const std::string& group) const {
  double sum = 0;
  for (const auto& e : entries)
    if (e.group == group) sum += e.bytes_per_rank;
  return sum;
}

double CommVolume::total() const {
  double sum = 0;
  for (const auto& e : entries) sum += e.bytes_per_rank;
  return sum;
}

CommVolume rank_communication(const ModelShape& m, const Job& job, const Layout& l, int stage) {
  CommVolume v;
  const StageShape st = stage_shape(m, l, stage);
  const double tokens = real(tokens_per_micro_batch(job, l));
  const double ab = job.activation_bytes;
  const double h = real(m.hidden);
  const int64_t mbs = l.num_micro_batches;
  const double moe_layers = stage_expert_layers(m, st);
  const double dense_layers = real(st.num_layers) - moe_layers;
  const char* tp_op = l.sequence_parallel ? "reduce_scatter+all_gather" : "all_reduce";
  // Without sequence parallelism the ranks of a TP group hold the same tokens, and with
  // etp == tp each dispatches all of them to its expert-TP shards over the EP group: the
  // experts' partial outputs are summed by the layer's own TP all-reduce, as a dense MLP's
  // (metamorph's runtime, docs/parallelism.md). With sequence parallelism (Megatron-Core) the
  // expert-TP group gathers its tokens after the dispatch and reduce-scatters before the combine.
  // Whole experts over the TP group likewise: each rank runs its experts' rows of the same tokens.
  const bool replicated_tokens = !l.sequence_parallel && (l.etp == l.tp || l.experts_over_tp());
  // Full recompute runs every layer's forward again before its backward, collectives included:
  // the forward's half of a layer's collectives happens twice.
  const double rerun = l.recompute == Recompute::full ? 1.5 : 1.0;
  if (l.tp > 1) {
    // Two per attention and two per MLP, forward and backward; an MoE layer's routed experts
    // take their tokens by all-to-all instead, its shared experts still need TP.
    const double per_mb =
        rerun * (replicated_tokens
                     ? 4 * real(st.num_layers)
                     : 4 * dense_layers + moe_layers * (2 + (m.shared_expert_ffn > 0 ? 2 : 0)));
    const auto count = static_cast<int64_t>(per_mb) * mbs;
    // An all-reduce of n bytes sends 2(t-1)/t n per rank (ring), the convention the runtime's
    // communicators count by (docs/parallelism.md); reduce-scatter + all-gather the same.
    const double ring = 2.0 * (l.tp - 1) / l.tp;
    v.entries.push_back(
        {"tp", tp_op, l.tp, count, tokens * h * ab, ring * real(count) * tokens * h * ab});
    // Vocabulary parallelism: the embedding output (first stage), the LM head's input gradient
    // and the cross-entropy's fp32 row max, exp-sum and target logit (last stage).
    if (st.has_embedding)
      v.entries.push_back(
          {"tp", "all_reduce", l.tp, mbs, tokens * h * ab, ring * real(mbs) * tokens * h * ab});
    if (st.has_lm_head) {
      v.entries.push_back(
          {"tp", "all_reduce", l.tp, mbs, tokens * h * ab, ring * real(mbs) * tokens * h * ab});
      v.entries.push_back(
          {"tp", "all_reduce", l.tp, 3 * mbs, tokens * 4, ring * real(3 * mbs) * tokens * 4});
    }
    // QK-norm weights see only this rank's heads: their gradients are summed once a step.
    if (m.qk_norm) {
      const double bytes = real(st.num_layers) * 2 * real(m.head_dim) * job.grad_bytes;
      v.entries.push_back({"tp", "all_reduce", l.tp, 1, bytes, ring * bytes});
    }
    // Routers (and shared-expert gates) see the experts' TP-partial outputs: the same.
    if (replicated_tokens && moe_layers > 0) {
      const double bytes =
          moe_layers * (real(m.num_experts) + (m.shared_expert_gate ? 1 : 0)) * h * job.grad_bytes;
      v.entries.push_back({"tp", "all_reduce", l.tp, 1, bytes, ring * bytes});
    }
  }
  const double routed = tokens / l.tp * real(m.top_k) * l.etp * h * ab;
  if (l.etp > 1 && moe_layers > 0 && !replicated_tokens && l.sequence_parallel) {
    const auto count = static_cast<int64_t>(rerun * 2 * moe_layers) * mbs;
    v.entries.push_back({"etp", tp_op, l.etp, count, routed, real(count) * routed});
  } else if (l.etp > 1 && moe_layers > 0 && !replicated_tokens) {
    // Expert-TP across replicas (metamorph's runtime, tp 1): a member's routed rows go to the
    // etp - 1 others (gather) and their partial outputs come back (reduce-scatter), forward and
    // backward; each forward first all-gathers the members' per-expert counts.
    const auto count = static_cast<int64_t>(rerun * 4 * moe_layers) * mbs;
    const double rows = routed / l.etp;
    v.entries.push_back(
        {"etp", "all_to_all_v", l.etp, count, rows, real(count) * rows * (l.etp - 1)});
    const auto plans = static_cast<int64_t>(2 * (rerun - 0.5) * moe_layers) * mbs;
    const double counts = 8.0 * real(m.num_experts / l.ep) * l.etp;
    v.entries.push_back({"etp", "all_gather", l.etp, plans, counts,
                         real(plans) * std::floor(counts * (l.etp - 1) / l.etp)});
  }
  if (l.pp > 1) {
    // Each model chunk sends activations forward unless it is the last, gradients backward
    // unless it is the first.
    const int sends = 2 * l.vpp - (stage == l.pp - 1 ? 1 : 0) - (stage == 0 ? 1 : 0);
    const double message = tokens * h * ab / (l.sequence_parallel ? l.tp : 1);
    const int64_t count = sends * mbs;
    v.entries.push_back({"pp", "p2p", 2, count, message, real(count) * message});
    // The last stage's loss sum reaches every stage (one fp32 all-reduce a step).
    v.entries.push_back({"pp", "all_reduce", l.pp, 1, 4, std::floor(2.0 * (l.pp - 1) / l.pp * 4)});
  }
  if (l.ep > 1 && moe_layers > 0 && !l.experts_over_tp()) {
    const auto count = static_cast<int64_t>(rerun * 4 * moe_layers) * mbs;
    v.entries.push_back(
        {"ep", "all_to_all", l.ep, count, routed, real(count) * routed * (l.ep - 1) / l.ep});
    // Each forward first agrees on the row counts: one int64 per expert, all-to-all.
    const double counts = 8 * real(m.num_experts);
    const auto plans = static_cast<int64_t>(2 * (rerun - 0.5) * moe_layers) * mbs;
    v.entries.push_back({"ep", "all_to_all", l.ep, plans, counts,
                         real(plans) * std::floor(counts * (l.ep - 1) / l.ep)});
  }
  const RankParameters params = rank_parameters(m, l, stage);
  const auto data_parallel = [&](const char* group, int size, double n) {
    if (size <= 1 || n <= 0) return;
    const double share = real(size - 1) / size;
    if (l.zero1) {
      v.entries.push_back(
          {group, "reduce_scatter", size, 1, n * job.grad_bytes, share * n * job.grad_bytes});
      v.entries.push_back(
          {group, "all_gather", size, 1, n * job.weight_bytes, share * n * job.weight_bytes});
    } else {
      v.entries.push_back(
          {group, "all_reduce", size, 1, n * job.grad_bytes, 2 * share * n * job.grad_bytes});
    }
  };
  // A tied embedding lives on the first and the last stage; their gradients are summed.
  if (l.pp > 1 && m.tie_embeddings && (st.has_embedding || st.has_lm_head)) {
    const double n = real(m.vocab_size) / l.tp * h * job.grad_bytes;
    v.entries.push_back({"embedding", "all_reduce", 2, 1, n, n});
  }
  // The squared gradient norm over the model-parallel ranks, and the stop-signal agreement
  // over the world, once a step.
  const auto scalar = [&](const char* group, int size) {
    if (size > 1)
      v.entries.push_back(
          {group, "all_reduce", size, 1, 4, std::floor(2.0 * (size - 1) / size * 4)});
  };
  scalar("model_parallel", l.tp * l.pp);
  // Under expert parallelism the experts' part of the squared gradient norm is summed over the
  // EP, expert-TP and pipeline groups (and expert-DP under ZeRO-1).
  if ((l.ep > 1 || l.etp != l.tp) && m.is_moe()) {
    scalar("ep", l.ep);
    scalar("etp", l.etp);
    scalar("pp", l.pp);
    if (l.zero1) scalar("edp", l.expert_dp());
  }
  scalar("world", l.world());
  data_parallel("dp", l.dp, params.dense);
  // The step's token count and loss sum (and, under ZeRO-1, the replicas' parts of the squared
  // gradient norm) are fp32 all-reduces over the replicas.
  if (l.dp > 1) {
    const int scalars = l.zero1 ? 3 : 2;
    v.entries.push_back(
        {"dp", "all_reduce", l.dp, scalars, 4, scalars * std::floor(2.0 * (l.dp - 1) / l.dp * 4)});
  }
  data_parallel("edp", l.expert_dp(), params.expert);
  // Each MoE layer's per-expert token counts (and slots, drops) are summed over the replicas once
  // a step, for the balancing bias and the metrics (E + 2 int64).
  if (l.dp > 1 && moe_layers > 0) {
    const double counts = 8.0 * real(m.num_experts + 2);
    const auto n = static_cast<int64_t>(moe_layers);
    v.entries.push_back({"dp", "all_reduce", l.dp, n, counts,
                         real(n) * std::floor(2.0 * (l.dp - 1) / l.dp * counts)});
  }
  return v;
}

namespace {

struct StageTime {
  double compute = 0, tp = 0, ep = 0, p2p = 0;
  double per_micro_batch() const { return compute + tp + ep + p2p; }
};

// One micro-batch's forward through a layer's routed experts on one rank (0 for a dense layer).
double routed_expert_forward_seconds(const ModelShape& m, const Job& job, const Cluster& cluster,
                                     const Layout& l, const LayerFlops& f, double tokens) {
  if (f.expert_gemm <= 0) return 0;
  const double t = l.tp;
  const double tokens_per_expert = tokens / t * real(m.top_k) * l.etp * l.ep / real(m.num_experts);
  const double local_experts = real(m.num_experts) / l.ep;
  const double eff =
      gemm_efficiency(cluster.calibration, cluster.gpu, std::max(tokens_per_expert, 1.0),
                      real(m.moe_ffn) / l.etp, real(m.hidden), local_experts);
  return f.expert_gemm * tokens / t / (cluster.gpu.peak_tflops * 1e12 * eff) *
         (l.ep > 1 ? job.expert_load : 1.0);
}

// The weight-gradient GEMM seconds behind one micro-batch's backward TP all-reduces of a layer,
// scaled by the calibration's tp_backward_overlap. The runtime starts the all-reduce of each
// partial input gradient as soon as it is formed and runs the weight gradients of the projections
// that formed it while the sum is in flight (Megatron's asynchronous TP all-reduce,
// models/decoder_layer.cpp): attention's behind q/k/v/o, the MLP's behind gate/up, an MoE layer's
// behind the routed experts' gate/up, the router's and the shared-expert gate's (and, without EP,
// the shared expert's gate/up). `ffn_sums`: whether the FFN's output (and input gradient) is
// summed over TP at all (an MoE layer whose experts take their tokens by all-to-all and which has
// no shared expert does not).
struct WeightGradWindows {
  double attention = 0, ffn = 0;
  bool ffn_sums = true;
};

WeightGradWindows weight_grad_windows(const ModelShape& m, const Job& job, const Cluster& cluster,
                                      const Layout& l, int64_t layer, double tokens,
                                      double dense_eff) {
  const double t = l.tp, h = real(m.hidden), peak = cluster.gpu.peak_tflops * 1e12;
  // A GEMM's weight gradient costs its forward: 2 x tokens x in x out FLOPs.
  const auto weight_grads = [&](double outputs) {
    return cluster.calibration.tp_backward_overlap * 2 * tokens * h * outputs / (peak * dense_eff);
  };
  const bool replicated_tokens = l.etp == l.tp || l.experts_over_tp();
  const double q = real(m.attention_width()), kv = real(m.kv_width());
  WeightGradWindows w;
  w.attention = weight_grads((2 * q + 2 * kv) / t);
  if (!m.layer_is_moe(layer)) {
    w.ffn = weight_grads(real(m.ffn) * (m.gated_mlp ? 2 : 1) / t);
  } else if (replicated_tokens || m.shared_expert_ffn > 0) {
    // The routed experts' gate and up: two of their three GEMMs.
    const double experts =
        cluster.calibration.tp_backward_overlap * 2.0 / 3.0 *
        routed_expert_forward_seconds(m, job, cluster, l,
                                      forward_flops_per_token(m, layer, job.network_seq()), tokens);
    // Deferred only where no exchange runs beside it (no EP, or experts over TP: no exchange).
    const double shared = l.ep == 1 || l.experts_over_tp() ? 2 * real(m.shared_expert_ffn) / t : 0;
    w.ffn = experts + weight_grads(real(m.num_experts) + (m.shared_expert_gate ? 1 : 0) + shared);
  } else {
    w.ffn_sums = false;
  }
  return w;
}

// Seconds of one micro-batch's backward TP all-reduces that weight-gradient GEMMs hide: each costs
// max(0, all-reduce - its window) on the critical path (tp_backward_overlap 0 charges every
// all-reduce whole); the LM head's input gradient hides behind its own weight gradient. Forward
// all-reduces stay exposed: the next sublayer needs their sum (interleaved pairs hide them behind
// the other micro-batch: interleaved_pairs_hidden_seconds). Sequence parallelism (Megatron's
// reduce-scatter/all-gather pair) is charged whole.
double hidden_backward_tp_seconds(const ModelShape& m, const Job& job, const Cluster& cluster,
                                  const Layout& l, const StageShape& st, double tokens,
                                  double dense_eff, double head_eff) {
  if (l.tp <= 1 || l.sequence_parallel) return 0;
  const double t = l.tp, h = real(m.hidden), peak = cluster.gpu.peak_tflops * 1e12;
  const double all_reduce = collective_seconds(cluster, Collective::all_reduce,
                                               tokens * h * job.activation_bytes, l.tp, l.tp);
  const auto hidden = [&](double gemm_seconds) { return std::min(all_reduce, gemm_seconds); };
  double seconds = 0;
  for (int64_t i = st.first_layer; i < st.first_layer + st.num_layers; ++i) {
    const WeightGradWindows w = weight_grad_windows(m, job, cluster, l, i, tokens, dense_eff);
    seconds += hidden(w.attention);
    if (w.ffn_sums) seconds += hidden(w.ffn);
  }
  if (st.has_lm_head)
    seconds += hidden(cluster.calibration.tp_backward_overlap * 2 * tokens * h *
                      (real(m.vocab_size) / t) / (peak * head_eff));
  return seconds;
}

// One micro-batch's forward seconds of a layer's two phases on one rank: the attention phase
// (q/k/v/o projections and attention) and the FFN phase (MLP, or router, experts and shared
// expert). Their backward is priced at twice the forward, as in stage_time. The memory-bound
// work (norms, residuals) is left out: the windows below are lower bounds.
struct PhaseSeconds {
  double attention = 0, ffn = 0;
};

PhaseSeconds phase_seconds(const ModelShape& m, const Job& job, const Cluster& cluster,
                           const Layout& l, int64_t layer, double tokens, double dense_eff,
                           double attention_eff) {
  const double t = l.tp, peak = cluster.gpu.peak_tflops * 1e12, h = real(m.hidden);
  const LayerFlops f = forward_flops_per_token(m, layer, job.network_seq());
  const double projections = 2.0 * h * (2.0 * real(m.attention_width()) + 2.0 * real(m.kv_width()));
  PhaseSeconds p;
  p.attention = projections * tokens / t / (peak * dense_eff) +
                f.attention * tokens / t / (peak * attention_eff);
  p.ffn = (f.dense_gemm - projections) * tokens / t / (peak * dense_eff) +
          routed_expert_forward_seconds(m, job, cluster, l, f, tokens);
  return p;
}

// Seconds of TP all-reduces that a pair of interleaved micro-batches (A and B) hides on one rank
// beyond what a single micro-batch hides (`train --interleave-pairs`,
// Transformer::forward_backward_interleaved). Each layer runs A-attention, B-attention, A-FFN,
// B-FFN forward, and A-FFN, B-FFN, A-attention, B-attention backward; a phase's all-reduce is in
// flight while the next phase (the other micro-batch's) computes, so it costs at most
// max(0, all-reduce - that phase). Forward: A's attention sum behind B's attention, B's behind A's
// FFN, A's FFN sum behind B's FFN, B's behind A's next attention (the last layer's waits).
// Backward, on top of each sum's own weight-gradient window (hidden_backward_tp_seconds, so the
// two are not counted twice): A's FFN sum behind B's FFN backward, B's behind A's attention
// backward, A's attention sum behind B's attention backward, B's behind A's FFN backward of the
// layer below (the first layer's waits). The embedding's and the LM head's sums stay as they are:
// the heads run one after the other.
double interleaved_pairs_hidden_seconds(const ModelShape& m, const Job& job, const Cluster& cluster,
                                        const Layout& l, const StageShape& st, double tokens,
                                        double dense_eff, double attention_eff) {
  if (l.tp <= 1 || !l.interleave_pairs) return 0;
  const double all_reduce = collective_seconds(
      cluster, Collective::all_reduce, tokens * real(m.hidden) * job.activation_bytes, l.tp, l.tp);
  const auto behind = [&](double compute) { return std::min(all_reduce, compute); };
  // What the other micro-batch's phase adds to a sum's own window.
  const auto beyond = [&](double own, double compute) {
    return std::min(all_reduce, own + compute) - std::min(all_reduce, own);
  };
  const int64_t first = st.first_layer, end = st.first_layer + st.num_layers;
  const auto phases = [&](int64_t i) {
    return phase_seconds(m, job, cluster, l, i, tokens, dense_eff, attention_eff);
  };
  double seconds = 0;
  for (int64_t i = first; i < end; ++i) {
    const PhaseSeconds p = phases(i);
    WeightGradWindows w;  // sequence parallelism: no weight-gradient windows modelled
    if (!l.sequence_parallel) w = weight_grad_windows(m, job, cluster, l, i, tokens, dense_eff);
    // Forward.
    seconds += behind(p.attention) + behind(p.ffn);
    if (w.ffn_sums) seconds += behind(p.ffn) + (i + 1 < end ? behind(phases(i + 1).attention) : 0);
    // Backward.
    if (w.ffn_sums) seconds += beyond(w.ffn, 2 * p.ffn) + beyond(w.ffn, 2 * p.attention);
    seconds += beyond(w.attention, 2 * p.attention);
    if (i > first) seconds += beyond(w.attention, 2 * phases(i - 1).ffn);
  }
  return seconds;
}

// Memory traffic of the softmax cross-entropy per logit, beyond the LM head's GEMMs. metamorph's
// loss reads the logits once forward and once backward and writes their gradient (docs/ops.md);
// Megatron-LM's upcasts them to f32 and passes over them several times.
double loss_bytes_per_logit(const Job& job, const Calibration& cal) {
  if (job.accounting == ActivationAccounting::metamorph) return 3.0 * job.activation_bytes;
  return cal.elementwise_passes * 4.0;
}

StageTime stage_time(const ModelShape& m, const Job& job, const Cluster& cluster, const Layout& l,
                     int stage) {
  const StageShape st = stage_shape(m, l, stage);
  const Calibration& cal = cluster.calibration;
  const double peak = cluster.gpu.peak_tflops * 1e12;
  const double mem_bw = cluster.gpu.memory_bw_gbs * 1e9;
  const double tokens = real(tokens_per_micro_batch(job, l));
  const double t = l.tp;
  const double attention_eff =
      cal.attention_efficiency > 0 ? cal.attention_efficiency : cluster.gpu.attention_efficiency;
  const double dense_eff =
      gemm_efficiency(cal, cluster.gpu, tokens, real(m.attention_width()) / t, real(m.hidden));
  StageTime time;
  for (int64_t i = st.first_layer; i < st.first_layer + st.num_layers; ++i) {
    const LayerFlops f = forward_flops_per_token(m, i, job.network_seq());
    double forward = f.dense_gemm * tokens / t / (peak * dense_eff) +
                     f.attention * tokens / t / (peak * attention_eff);
    forward += routed_expert_forward_seconds(m, job, cluster, l, f, tokens);
    const double activation = layer_activation_bytes(m, job, l, i);
    double layer = 3 * forward + cal.elementwise_passes * activation / mem_bw;
    if (l.recompute == Recompute::full) layer += forward + activation / mem_bw;
    if (l.recompute == Recompute::selective)
      layer += f.attention * tokens / t / (peak * attention_eff) +
               (activation - stored_activation_bytes(m, job, l, i)) / mem_bw;
    time.compute += layer;
  }
  const double head_eff =
      gemm_efficiency(cal, cluster.gpu, tokens, real(m.vocab_size) / t, real(m.hidden));
  if (st.has_lm_head)
    time.compute += 3 * lm_head_forward_flops_per_token(m) * tokens / t / (peak * head_eff) +
                    loss_bytes_per_logit(job, cal) * tokens * real(m.vocab_size) / t / mem_bw;
  const CommVolume comm = rank_communication(m, job, l, stage);
  const double mbs = real(l.num_micro_batches);
  for (const auto& e : comm.entries) {
    const double per_mb = real(e.count) / mbs;
    if (e.group == "tp" || e.group == "etp") {
      time.tp += per_mb * collective_seconds(cluster, Collective::all_reduce, e.message_bytes,
                                             e.group_size, e.group_size);
    } else if (e.group == "ep") {
      time.ep += per_mb * collective_seconds(cluster, Collective::all_to_all, e.message_bytes,
                                             e.group_size, l.tp * l.ep);
    } else if (e.group == "pp" && e.op == "p2p") {
      // In steady 1F1B a stage waits for one activation and one gradient per micro-batch
      // and chunk.
      time.p2p += 2.0 * l.vpp *
                  collective_seconds(cluster, Collective::p2p, e.message_bytes, 2, l.tp * l.dp + 1);
    }
  }
  time.tp -= hidden_backward_tp_seconds(m, job, cluster, l, st, tokens, dense_eff, head_eff);
  if (l.interleave_pairs) {
    // Per micro-batch, like every term here: floor(m / 2) pairs (an odd last one runs alone),
    // each hiding what interleaved_pairs_hidden_seconds says, less the interference.
    const double pairs = std::floor(mbs / 2);
    time.tp -=
        (1.0 - cal.tp_overlap_interference) * pairs / mbs *
        interleaved_pairs_hidden_seconds(m, job, cluster, l, st, tokens, dense_eff, attention_eff);
  }
  return time;
}

}  // namespace

StepTime step_time(const ModelShape& m, const Job& job, const Cluster& cluster, const Layout& l) {
  StageTime slowest;
  int slowest_stage = 0;
  for (int stage = 0; stage < l.pp; ++stage) {
    const StageTime s = stage_time(m, job, cluster, l, stage);
    if (stage == 0 || s.per_micro_batch() > slowest.per_micro_batch()) {
      slowest = s;
      slowest_stage = stage;
    }
  }
  const double mbs = real(l.num_micro_batches);
  StepTime time;
  time.compute = mbs * slowest.compute;
  time.tp_comm = mbs * slowest.tp;
  time.ep_all_to_all = mbs * slowest.ep;
  time.pp_p2p = mbs * slowest.p2p;
  time.pp_bubble = real(l.pp - 1) / l.vpp * slowest.per_micro_batch();

  // Gradient reduction overlaps the last micro-batch's backward (2/3 of its compute); the
  // ZeRO-1 parameter all-gather overlaps the next step's first forward (1/3).
  const RankParameters params = rank_parameters(m, l, slowest_stage);
  // metamorph's runtime (the metamorph accounting, runtime/train/training_run.cpp) overlaps both
  // as Megatron does: plain DP's bucketed all-reduce and ZeRO-1's bucketed reduce-scatter with
  // the last backward, ZeRO-1's bucketed all-gather with the next forward (each layer waits for
  // its own bucket). Not under TP with QK-norm or MoE: there the reduction waits for TP's
  // partial-gradient sums, and ZeRO-1 reduce-scatters and all-gathers in one call each.
  const bool runtime = job.accounting == ActivationAccounting::metamorph;
  const bool serial = runtime && l.tp > 1 && (m.qk_norm || m.is_moe());
  const double overlap = serial ? 0.0 : cluster.calibration.grad_reduce_overlap;
  const double backward_window = overlap * slowest.compute * 2.0 / 3.0;
  const double forward_window = overlap * slowest.compute / 3.0;
  double reduce = 0, gather = 0;
  const auto add = [&](int size, double n) {
    if (size <= 1 || n <= 0) return;
    if (l.zero1) {
      reduce += collective_seconds(cluster, Collective::reduce_scatter, n * job.grad_bytes, size,
                                   l.tp * l.dp);
      gather += collective_seconds(cluster, Collective::all_gather, n * job.weight_bytes, size,
                                   l.tp * l.dp);
    } else {
      reduce += collective_seconds(cluster, Collective::all_reduce, n * job.grad_bytes, size,
                                   l.tp * l.dp);
    }
  };
  add(l.dp, params.dense);
  add(l.expert_dp(), params.expert);
  time.dp_exposed =
      std::max(0.0, reduce - backward_window) + std::max(0.0, gather - forward_window);

  // The gradient norm reads the gradients; AdamW reads and writes gradients (zeroed for the next
  // step), master weights and moments and writes the bf16 weights.
  const double update_bytes = 3.0 * job.grad_bytes +
                              2.0 * (job.master_bytes + job.optimizer_state_bytes) +
                              job.weight_bytes;
  const double local =
      params.dense / (l.zero1 ? l.dp : 1) + params.expert / (l.zero1 ? l.expert_dp() : 1);
  time.optimizer = local * update_bytes / (cluster.gpu.memory_bw_gbs * 1e9);
  return time;
}

std::string layout_problem(const ModelShape& m, const Job& job, const Cluster& cluster,
                           const Layout& l) {
  if (l.tp < 1 || l.pp < 1 || l.dp < 1 || l.vpp < 1 || l.ep < 1 || l.etp < 1 || l.micro_batch < 1)
    return "every parallel size and the micro-batch must be at least 1";
  if (l.world() != cluster.gpus)
    return concat("tp x pp x dp = ", l.world(), " but the cluster has ", cluster.gpus, " GPUs");
  if (l.tp > cluster.gpus_per_node)
    return concat("TP ", l.tp, " spans nodes (", cluster.gpus_per_node, " GPUs per node)");
  // Consecutive TP groups that do not tile a node straddle two nodes (TP 6 on 8-GPU nodes: ranks
  // 6-11), and their all-reduces would cross the network on every layer.
  if (cluster.gpus > cluster.gpus_per_node && cluster.gpus_per_node % l.tp != 0)
    return concat("TP ", l.tp, " does not divide the ", cluster.gpus_per_node,
                  " GPUs of a node: some TP groups would straddle two nodes");
  if (m.heads % l.tp != 0)
    return concat("attention heads (", m.heads, ") not divisible by TP ", l.tp);
  if (m.kv_heads % l.tp != 0)
    return concat("KV heads (", m.kv_heads, ") not divisible by TP ", l.tp);
  if (m.ffn % l.tp != 0) return concat("FFN size (", m.ffn, ") not divisible by TP ", l.tp);
  if (m.shared_expert_ffn % l.tp != 0)
    return concat("shared expert FFN size (", m.shared_expert_ffn, ") not divisible by TP ", l.tp);
  if (l.pp > m.layers) return concat("PP ", l.pp, " exceeds the ", m.layers, " layers");
  if (l.vpp > 1 && l.pp == 1) return "virtual stages need PP > 1";
  if (l.vpp > 1 && m.layers % (l.pp * l.vpp) != 0)
    return concat("layers (", m.layers, ") not divisible by PP x VPP = ", l.pp * l.vpp);
  if (!m.is_moe() && (l.ep > 1 || l.etp > 1)) return "EP and expert-TP need an MoE model";
  if (m.is_moe() && m.num_experts % l.ep != 0)
    return concat("experts (", m.num_experts, ") not divisible by EP ", l.ep);
  if (l.dp % l.ep != 0 && !l.experts_over_tp())
    return concat("EP ", l.ep, " does not divide DP ", l.dp,
                  " (EP may instead equal TP with expert-TP 1 and no sequence parallelism)");
  if (l.tp % l.etp != 0) return concat("expert-TP ", l.etp, " does not divide TP ", l.tp);
  if (m.is_moe() && m.moe_ffn % l.etp != 0)
    return concat("expert FFN size (", m.moe_ffn, ") not divisible by expert-TP ", l.etp);
  if (job.global_batch % (static_cast<int64_t>(l.dp) * l.micro_batch) != 0)
    return concat("global batch ", job.global_batch, " not divisible by DP x micro-batch = ",
                  static_cast<int64_t>(l.dp) * l.micro_batch);
  if (l.num_micro_batches != job.global_batch / (static_cast<int64_t>(l.dp) * l.micro_batch))
    return concat("micro-batches ", l.num_micro_batches, " x micro-batch ", l.micro_batch, " x DP ",
                  l.dp, " != global batch ", job.global_batch);
  if (l.vpp > 1 && l.num_micro_batches % l.pp != 0)
    return concat("interleaving needs micro-batches (", l.num_micro_batches, ") divisible by PP ",
                  l.pp);
  // A dense model has no expert-DP group (etp stays 1, so expert_dp() would read TP x DP).
  if (l.zero1 && l.dp == 1 && (!m.is_moe() || l.expert_dp() == 1))
    return "a sharded optimizer (ZeRO-1) needs data parallelism";
  if (l.interleave_pairs) return interleave_pairs_problem(l);
  return {};
}

Evaluation evaluate(const ModelShape& m, const Job& job, const Cluster& cluster, const Layout& l,
                    double headroom) {
  Evaluation e;
  e.layout = l;
  e.reason = layout_problem(m, job, cluster, l);
  if (!e.reason.empty()) return e;
  e.valid = true;
  for (int stage = 0; stage < l.pp; ++stage) {
    const MemoryBreakdown mem = rank_memory(m, job, cluster, l, stage);
    if (stage == 0 || mem.total() > e.memory.total()) {
      e.memory = mem;
      e.peak_stage = stage;
    }
  }
  e.comm = rank_communication(m, job, l, e.peak_stage);
  e.time = step_time(m, job, cluster, l);
  e.model_flops_per_step = training_flops_per_token(m, job.network_seq()) *
                           real(job.network_seq()) * real(job.global_batch);
  const double seconds = e.time.total();
  e.tokens_per_s = real(job.tokens_per_step()) / seconds;
  e.mfu = e.model_flops_per_step / (seconds * cluster.gpus * cluster.gpu.peak_tflops * 1e12);
  const double usable = cluster.gpu.memory_gib * kGiB * (1.0 - headroom);
  if (e.memory.total() > usable) {
    e.reason = concat("out of memory by ", std::round((e.memory.total() - usable) / kGiB * 10) / 10,
                      " GiB (needs ", std::round(e.memory.total() / kGiB * 10) / 10, " of ",
                      std::round(usable / kGiB * 10) / 10, " GiB usable, pipeline stage ",
                      e.peak_stage, ")");
    return e;
  }
  e.feasible = true;
  return e;
}

}  // namespace metamorph::planner

#include "planner/runtime_memory.hpp"

#include <algorithm>
#include <cmath>

namespace metamorph::planner {

namespace {

constexpr double kStatBytes = 4;   // rstd, log-sum-exp, logits and gates are fp32 on every backend
constexpr double kIndexBytes = 4;  // i32 token index of a routed row

double real(int64_t value) {
  return static_cast<double>(value);
}

// Per token of one micro-batch on one rank: what the layer's FFN (dense SwiGLU or MoE block) keeps
// for its backward, and the most its backward allocates on top of everything kept.
struct FfnBytes {
  double kept = 0;
  double backward_peak = 0;
};

FfnBytes ffn_bytes(const ModelShape& m, const Job& job, const Layout& l, int64_t layer) {
  const double ab = job.activation_bytes, h = real(m.hidden), t = l.tp;
  FfnBytes b;
  if (!m.layer_is_moe(layer)) {
    // Gate, up and product; backward adds the incoming gradient and the gate and up gradients.
    b.kept = 3 * ab * real(m.ffn) / t;
    b.backward_peak = ab * h + 2 * ab * real(m.ffn) / t;
    return b;
  }
  // Every TP rank routes all of its tokens (no sequence parallelism) and runs its slice of each
  // expert; expert-TP across replicas (tp 1) gathers the group's rows instead; with whole experts
  // over the TP group a rank runs its experts' share (1/EP uniformly) of the same rows.
  const double k = real(m.top_k), E = real(m.num_experts);
  const double f = real(m.moe_ffn) / l.etp, fs = real(m.shared_expert_ffn) / t;
  const double gather = l.tp == 1 && l.etp > 1 ? l.etp : 1;
  const double share = l.experts_over_tp() ? 1.0 / l.ep : 1.0;
  const double sent = job.routing.sent * k, received = job.routing.received * k * gather * share;
  // The combined expert outputs kept for the gate gradient: every sent row, or with whole experts
  // over the TP group (no rows move) this rank's own rows alone.
  const double combined = l.experts_over_tp() ? received : sent;
  // MoeBlock::Pending: fp32 router logits and the router's output; per sent row its token
  // index and gate; the combined outputs; per received row the expert input and the SwiGLU gate, up
  // and product; the shared expert's SwiGLU tensors, and with a shared-expert gate its output and
  // fp32 gate. The router's output per token: chosen experts and gates, the probabilities the
  // balancing loss averages (and the sigmoid scores), the logsumexp, and each slot's row.
  const double routing = kIndexBytes * k + kStatBytes * k + kStatBytes * E +
                         (m.router_bias ? kStatBytes * E : 0) + kStatBytes + kIndexBytes * k;
  const double gated = m.shared_expert_gate ? ab * h + kStatBytes + kIndexBytes : 0;
  b.kept = kStatBytes * E + routing + sent * (kIndexBytes + kStatBytes) + combined * ab * h +
           received * (ab * h + 3 * ab * f) + 3 * ab * fs + gated;
  // MoeBlock::backward, with the incoming gradient and the fp32 gate gradients of the rows alive:
  // the dispatch of the output gradients (under EP a received copy and its regrouping), then the
  // experts' backward (output and input gradients, gate and up gradients), the combine of the
  // input gradients, and last the shared expert once the routed tensors are gone. Under TP the
  // experts' gate and up gradients stay until the block's deferred weight gradients run (after
  // dx's TP all-reduce has started), through the combine and the shared expert; without TP
  // they are spent before the combine.
  const double freed = (l.tp > 1 ? 1 : 3) * received * ab * f;
  const double base = ab * h + kStatBytes * sent;
  // The exchange's received copy and its regrouping by expert; expert-TP across replicas then
  // copies the rows for every member and receives and regroups the group's rows while both stay.
  const double exchanged = job.routing.received * k * share;
  const double dispatch = base + 2 * exchanged * ab * h +
                          (gather > 1 ? gather * exchanged * ab * h + 2 * received * ab * h : 0);
  const double experts = base + 2 * received * ab * h + 2 * received * ab * f - combined * ab * h;
  // The combine: the input gradients, their regrouping by source and (under EP across replicas)
  // the rows coming back.
  const double combine =
      base + 2 * received * ab * h + (l.ep > 1 && !l.experts_over_tp() ? sent * ab * h : 0) - freed;
  const double shared = base + ab * h + kStatBytes * E - freed - combined * ab * h +
                        (m.shared_expert_gate ? ab * h + 2 * kStatBytes : 0) + 2 * ab * fs;
  b.backward_peak = std::max({dispatch, experts, combine, m.shared_expert_ffn > 0 ? shared : 0.0});
  return b;
}

// Largest backward transient of one layer, per token, beyond what the layers keep: the FFN's
// (above), or in attention the post-attention residual gradient and the attention output,
// query, key and value gradients, when the FFN's own saved tensors and its input are gone, and
// the fused attention backward's scratch.
double layer_backward_transient(const ModelShape& m, const Job& job, const Layout& l,
                                int64_t layer) {
  const double ab = job.activation_bytes, h = real(m.hidden), t = l.tp;
  const double q = real(m.attention_width()), kv = real(m.kv_width());
  const FfnBytes ffn = ffn_bytes(m, job, l, layer);
  const double attention = 2 * ab * h + ab * (2 * q + 2 * kv) / t - (ab * h + ffn.kept) +
                           attention_scratch_bytes_per_token(m, job, l);
  return std::max(ffn.backward_peak, attention);
}

}  // namespace

double attention_scratch_bytes_per_token(const ModelShape& m, const Job& job, const Layout& l) {
  // cuDNN takes bf16 training attention of head_dim 64 or 128 with a causal mask, and block
  // diffusion's mask as two causal calls over halves of its [x_t ; x_0] rows
  // (runtime/backends/cuda/cuda_block_diffusion_attention.cu).
  const bool in_scope = job.activation_bytes == 2 && (m.head_dim == 64 || m.head_dim == 128);
  if (!in_scope || job.attention_scratch == AttentionScratch::none) return 0;
  const bool diffusion = job.objective == Objective::diffusion;
  const double dq_f32 = 4.0 * real(m.attention_width()) / l.tp;  // one f32 dQ row per token
  // Beside cuDNN's workspace the backward takes an f32 softmax sum per head
  // (runtime/backends/cuda/cudnn_attention.cpp), and the accumulator graph its f32 dQ accumulator;
  // its workspace is one more f32 dQ.
  const double softmax_sum = 4.0 * real(m.heads) / l.tp;
  // The deterministic graph keeps a dQ partial per block of keys and sums them in order: cuDNN
  // 9.19 on an H100 planned (blocks + 1) f32 dQ tensors with blocks of 128 keys at head_dim 64
  // and 256 at 128 (cudnn_probe: 2214592768 bytes at b2 s4096 h32 d64, 1140850944 at b2 s4096
  // h16 d128).
  const double keys_per_block = m.head_dim == 128 ? 256 : 128;
  const double call_seq = real(diffusion ? job.seq : job.network_seq());
  const double blocks = std::ceil(call_seq / keys_per_block);
  const double cudnn = job.attention_scratch == AttentionScratch::cudnn_atomic
                           ? 2 * dq_f32 + softmax_sum
                           : dq_f32 * (blocks + 1) + softmax_sum;
  if (!diffusion) return cudnn;
  // Block diffusion: the larger causal call covers half the rows (the calls run one after the
  // other), beside bf16 dQ/dK/dV for the calls' gradients and their packed lse; before them the
  // remainder's backward on our kernels, whose atomic dQ is an f32 dQ.
  const double ab = job.activation_bytes;
  const double parts = ab * (real(m.attention_width()) + 2 * real(m.kv_width())) / l.tp +
                       kStatBytes * real(m.heads) / l.tp + cudnn / 2;
  return job.attention_scratch == AttentionScratch::cudnn_atomic ? std::max(parts, dq_f32) : parts;
}

double metamorph_layer_bytes_per_token(const ModelShape& m, const Job& job, const Layout& l,
                                       int64_t layer) {
  const double ab = job.activation_bytes, h = real(m.hidden), t = l.tp;
  const double q = real(m.attention_width()), kv = real(m.kv_width());
  // Replicated: the layer input, the post-attention residual, both norm outputs, two rstd.
  const double replicated = 4 * ab * h + 2 * kStatBytes;
  // Split by TP: rotated q and k, v, the attention output, the per-head log-sum-exp.
  double split = ab * (2 * q + 2 * kv) + kStatBytes * real(m.heads);
  if (m.qk_norm) split += ab * (q + kv) + kStatBytes * real(m.heads + m.kv_heads);
  return replicated + split / t + ffn_bytes(m, job, l, layer).kept;
}

RoutingLoad worst_case_routing(const ModelShape& m, const Job& job, const Layout& l) {
  RoutingLoad load;
  if (!m.is_moe()) return load;
  const double k = real(m.top_k), local = real(m.num_experts / l.ep);
  // A token's k slots go to k different experts, so one rank's experts take at most min(k, local)
  // rows of each token of the EP group. Whole experts over the TP group: the group's tokens are
  // this rank's, and `received` counts in units of the uniform 1/EP share (ffn_bytes).
  const double group = l.experts_over_tp() ? 1 : l.ep;
  load.received = l.ep * std::min(k, local) / k;
  if (m.capacity_factor > 0) {
    const double tokens = real(job.network_seq() * l.micro_batch);
    const double capacity = std::ceil(m.capacity_factor * tokens * group * k / real(m.num_experts));
    load.received = std::min(load.received, local * capacity * l.ep / group / (tokens * k));
  }
  return load;
}

MemoryBreakdown metamorph_rank_memory(const ModelShape& m, const Job& job, const Layout& l,
                                      int stage) {
  const StageShape st = stage_shape(m, l, stage);
  const RankParameters params = rank_parameters(m, l, stage);
  const double local = params.dense + params.expert;
  MemoryBreakdown mem = model_state_memory(m, job, l, stage);
  // ZeRO-1 packs the gradients into one padded buffer plus this replica's segment, for the
  // reduce-scatter and again for the all-gather of the updated weights.
  if (l.zero1 && l.dp > 1) mem.optimizer_phase = job.grad_bytes * local * (1.0 + 1.0 / l.dp);

  const double ab = job.activation_bytes, h = real(m.hidden);
  const double tokens = real(job.network_seq() * l.micro_batch);
  // Interleaved pairs (one stage) run two micro-batches' forwards before their backwards.
  const double held =
      l.interleave_pairs ? 2.0 : std::min(real(l.pp - stage), real(l.num_micro_batches));
  // partner: under interleaved pairs, what the other pass of the pair holds beyond its kept
  // tensors while this one runs a layer's backward (below).
  double kept = 0, largest_layer = 0, transient = 0, partner = ab * h;
  for (int64_t i = st.first_layer; i < st.first_layer + st.num_layers; ++i) {
    const double layer = metamorph_layer_bytes_per_token(m, job, l, i);
    kept += l.recompute == Recompute::full ? ab * h : layer;
    largest_layer = std::max(largest_layer, layer);
    transient = std::max(transient, layer_backward_transient(m, job, l, i));
    // Recomputing, the first pass has rebuilt the layer and run its FFN backward when the second
    // rebuilds it: it holds the layer's tensors but its FFN's and the second norm's output (which
    // its FFN backward freed) and its input (kept anyway), plus its FFN input gradient, summing,
    // and its incoming gradient.
    if (l.recompute == Recompute::full)
      partner = std::max(partner, layer - ffn_bytes(m, job, l, i).kept);
  }
  // Full recompute rebuilds one layer (all but its input) at a time during backward.
  if (l.recompute == Recompute::full) transient += largest_layer - ab * h;
  if (st.has_lm_head) {
    // The final norm's input, output and rstd stay until the stage's backward ends; while the
    // loss runs, the fp32 logits of this rank's vocabulary slice, their log-sum-exp and the
    // head's input gradient are alive too.
    const double pending = 2 * ab * h + kStatBytes;
    const double head = ab * h + kStatBytes + kStatBytes * real(m.vocab_size) / l.tp;
    // Interleaved pairs (Transformer::forward_backward_interleaved): both passes' final-norm
    // tensors stay to the end; the heads run one after the other, the first pass's head gradient
    // waiting through the second's head; then, while one pass runs a layer's backward, the other
    // holds its incoming gradient, or recomputing the partner tensors above. (Without recompute
    // the other pass's tensors between two phases are fewer than the FFN tensors its own backward
    // has freed, so deeper layers peak lower.)
    transient = l.interleave_pairs ? 2 * pending + std::max(transient + partner, head + ab * h)
                                   : std::max(transient + pending, pending + head);
  }
  // A pipeline stage keeps its latest outgoing activation (to the next stage) and input
  // gradient (to the previous one) until the send completes.
  const double sends = (st.has_lm_head ? 0 : 1) + (st.has_embedding ? 0 : 1);
  // The trainer splits the replica's rows into inputs and targets (i32) up front; every
  // in-flight micro-batch keeps its RoPE positions.
  const double rows = real(job.global_batch / l.dp);
  const double token_buffers =
      4.0 * (2 * rows * real(job.network_seq()) + held * real(job.network_seq()));
  mem.activations = held * tokens * kept + tokens * transient + token_buffers;
  mem.comm_buffers = sends * tokens * ab * h;
  return mem;
}

}  // namespace metamorph::planner

#include "planner/runtime_memory.hpp"

#include <algorithm>

namespace metamorph::planner {

namespace {

constexpr double kStatBytes = 4;  // rstd, log-sum-exp and logits are fp32 on every backend

double real(int64_t value) {
  return static_cast<double>(value);
}

// Largest backward transient of one layer, per token, beyond what the layers keep: the incoming
// gradient plus, in the MLP, the gate and up gradients; in attention, the post-attention
// residual gradient and the attention output, query, key and value gradients (the MLP's own
// saved tensors are gone by then).
double layer_backward_transient(const ModelShape& m, const Job& job, const Layout& l,
                                int64_t layer) {
  const double ab = job.activation_bytes, h = real(m.hidden), t = l.tp;
  const double q = real(m.attention_width()), kv = real(m.kv_width());
  const double ffn =
      m.layer_is_moe(layer) ? real(m.top_k * m.moe_ffn + m.shared_expert_ffn) : real(m.ffn);
  const double mlp = ab * h + 2 * ab * ffn / t;
  const double attention = 2 * ab * h + ab * (2 * q + 2 * kv) / t - (ab * h + 3 * ab * ffn / t);
  return std::max(mlp, attention);
}

}  // namespace

double metamorph_layer_bytes_per_token(const ModelShape& m, const Job& job, const Layout& l,
                                       int64_t layer) {
  const double ab = job.activation_bytes, h = real(m.hidden), t = l.tp;
  const double q = real(m.attention_width()), kv = real(m.kv_width());
  // Replicated: the layer input, the post-attention residual, both norm outputs, two rstd.
  double replicated = 4 * ab * h + 2 * kStatBytes;
  // Split by TP: rotated q and k, v, the attention output, the per-head log-sum-exp.
  double split = ab * (2 * q + 2 * kv) + kStatBytes * real(m.heads);
  if (m.qk_norm) split += ab * (q + kv) + kStatBytes * real(m.heads + m.kv_heads);
  if (m.layer_is_moe(layer)) {
    const double k = real(m.top_k);
    // Router logits and probabilities, the permuted expert rows in and out, the experts' gate,
    // up and product, and the shared expert's.
    replicated += 2 * kStatBytes * real(m.num_experts) + 2 * k * ab * h;
    split += 3 * ab * (k * real(m.moe_ffn) + real(m.shared_expert_ffn));
  } else {
    split += 3 * ab * real(m.ffn);
  }
  return replicated + split / t;
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
  const double held = std::min(real(l.pp - stage), real(l.num_micro_batches));
  double kept = 0, largest_layer = 0, transient = 0;
  for (int64_t i = st.first_layer; i < st.first_layer + st.num_layers; ++i) {
    const double layer = metamorph_layer_bytes_per_token(m, job, l, i);
    kept += l.recompute == Recompute::full ? ab * h : layer;
    largest_layer = std::max(largest_layer, layer);
    transient = std::max(transient, layer_backward_transient(m, job, l, i));
  }
  // Full recompute rebuilds one layer (all but its input) at a time during backward.
  if (l.recompute == Recompute::full) transient += largest_layer - ab * h;
  if (st.has_lm_head) {
    // The final norm's input, output and rstd stay until the stage's backward ends; while the
    // loss runs, the fp32 logits of this rank's vocabulary slice, their log-sum-exp and the
    // head's input gradient are alive too.
    const double pending = 2 * ab * h + kStatBytes;
    const double head = ab * h + kStatBytes + kStatBytes * real(m.vocab_size) / l.tp;
    transient = std::max(transient + pending, pending + head);
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

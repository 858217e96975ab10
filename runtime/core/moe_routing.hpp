#pragma once
// What the Mixture-of-Experts routing ops of a Backend exchange (backend.hpp), and the router's
// arithmetic on host arrays. The host functions are the CPU backend's implementation and what
// models/router.hpp's unit tests differentiate; the CUDA backend reimplements them per token.
#include <cstdint>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

// How a router turns logits [tokens, E] into k experts and gates per token.
struct RouterSpec {
  std::int64_t num_experts = 0;
  std::int64_t top_k = 0;
  // Sigmoid scores, the choice by score + bias (DeepSeek-V3); else softmax probabilities, the
  // choice by logit.
  bool sigmoid = false;
  // Divide the k selected scores by their sum. Top-k then softmax (Mixtral) is softmax then
  // top-k renormalised: the same numbers.
  bool renormalise = false;
  double aux_loss_coef = 0.0;  // switch-style balancing loss coefficient
  double z_loss_coef = 0.0;
  // Benchmark mode: token t of the forward takes experts (t * k + j) mod E, j = 0..k-1, instead
  // of the top-k by key, so every expert gets floor or ceil(tokens * k / E) slots of every
  // forward (and under expert parallelism every rank the same rows). Everything else is
  // unchanged: the scores, gates = the chosen experts' probabilities or scores (renormalised as
  // configured), the aux and z losses and the whole backward.
  bool force_balance = false;
};

// The expert of slot j of token t under force_balance: consecutive slots cycle over the experts,
// so the k experts of one token differ (k <= E) and the T * k slots spread evenly. constexpr:
// the CUDA router kernel calls it too (nvcc's relaxed constexpr).
constexpr std::int32_t balanced_expert(std::int64_t token, std::int64_t slot, std::int64_t top_k,
                                       std::int64_t num_experts) {
  return static_cast<std::int32_t>((token * top_k + slot) % num_experts);
}

// One forward's routing summed over its tokens: small, on the host (the block sizes its
// permutation and the exchange from `counts`, and reports the losses).
struct RouterSummary {
  std::vector<std::int64_t> counts;  // [E] slots routed to each expert (before capacity drops)
  double aux_loss = 0.0;             // aux_loss_coef * E * sum_e f_e P_e
  double z_loss = 0.0;               // z_loss_coef * mean_t lse_t^2
  double entropy = 0.0;              // mean over tokens of the entropy of `prob` (nats)
};

// A forward's routing as backend tensors, kept for the backward pass.
struct RouterOutput {
  Tensor expert;  // i32 [tokens, k] chosen experts, best first (ties: lower expert id)
  Tensor gate;    // f32 [tokens, k] their gates
  // f32 [tokens, E] what the balancing loss averages: softmax probabilities, or for sigmoid
  // scoring the scores normalised over the experts.
  Tensor prob;
  Tensor score;  // f32 [tokens, E] sigmoid scores (sigmoid scoring only, else undefined)
  Tensor lse;    // f32 [tokens] logsumexp of the logits (z-loss)
  RouterSummary summary;
};

// A RouterOutput for `tokens` tokens with its tensors allocated (uninitialised) on `device`:
// expert and gate [tokens, k], prob (and, for sigmoid scoring, score) [tokens, E], lse [tokens].
RouterOutput empty_router_output(Arena& arena, Device device, std::int64_t tokens,
                                 const RouterSpec& spec);

// The router forward on host arrays: fills expert/gate [tokens * k], prob [tokens * E], score
// [tokens * E] (sigmoid only; may be null otherwise), lse [tokens]. Per token: max and
// logsumexp in double, softmax or sigmoid scores, top-k by key (ties to the lower id) or the
// balanced assignment (spec.force_balance), gates from the selected scores; then the summed
// statistics in token order.
RouterSummary route_rows(const float* logits, std::int64_t tokens, const RouterSpec& spec,
                         const float* bias, std::int32_t* expert, float* gate, float* prob,
                         float* score, float* lse);

// dlogits [tokens, E] (overwritten) of sum(dgate * gate) + loss_scale * (aux_loss + z_loss),
// given dgate [tokens * k] and the forward's outputs.
void route_rows_backward(const float* logits, std::int64_t tokens, const RouterSpec& spec,
                         const std::int32_t* expert, const float* gate, const float* prob,
                         const float* score, const float* lse,
                         const std::vector<std::int64_t>& counts, const float* dgate,
                         float loss_scale, float* dlogits);

}  // namespace metamorph

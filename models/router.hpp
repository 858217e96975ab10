#pragma once
// The Mixture-of-Experts router's scoring on host vectors: from the logits x W_r^T of every
// token to its k experts and their gates, the load-balancing and z losses, and the backward
// pass of all of it into the logits. The arithmetic is runtime/core/moe_routing (the CPU
// backend's router ops); these wrappers take a MoeConfig and own their vectors, so the scoring
// is tested on its own (finite differences, PyTorch).
#include <cstdint>
#include <vector>

#include "models/model_config.hpp"
#include "runtime/core/moe_routing.hpp"

namespace metamorph {

struct Routing {
  std::int64_t tokens = 0, num_experts = 0, top_k = 0;
  std::vector<std::int32_t> expert;  // [tokens * k] chosen experts, best first
  std::vector<float> gate;           // [tokens * k] their gates
  // [tokens * E] what the balancing loss averages: softmax probabilities, or for sigmoid
  // scoring the scores normalised over the experts.
  std::vector<float> prob;
  std::vector<float> score;          // [tokens * E] sigmoid scores (sigmoid_bias only)
  std::vector<float> lse;            // [tokens] logsumexp of the logits (z-loss)
  std::vector<std::int64_t> counts;  // [E] slots routed to each expert (before any capacity drop)
  double aux_loss = 0.0;             // aux_loss_coef * E * sum_e f_e P_e
  double z_loss = 0.0;               // z_loss_coef * mean_t lse_t^2
  double entropy = 0.0;              // mean over tokens of the entropy of `prob` (nats)
};

// The backend's description of a config's router.
RouterSpec router_spec(const MoeConfig& config);

// logits [tokens, E] row-major; bias [E] (sigmoid_bias only, else nullptr) shifts the top-k choice
// but not the gates.
Routing route(const float* logits, std::int64_t tokens, const MoeConfig& config, const float* bias);

// dlogits [tokens, E] (overwritten) of  sum(dgate * gate) + loss_scale * (aux_loss + z_loss),
// given dgate [tokens * k] (the gradient of the block's output with respect to each gate).
void route_backward(const Routing& routing, const float* logits, const MoeConfig& config,
                    const float* dgate, float loss_scale, float* dlogits);

// The balancing-bias rule of DeepSeek-V3 (auxiliary-loss-free balancing): every expert's bias
// moves by `rate` towards balance, bias_e += rate * sign(mean load - load_e).
void update_balancing_bias(float* bias, const std::vector<double>& load, double rate);

}  // namespace metamorph

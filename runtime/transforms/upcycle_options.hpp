#pragma once
// What `upcycle` builds from a dense model: how many experts, how they are cut from the dense
// FFN, how their symmetry is broken, and the MoE settings written into the new config. The
// defaults are AquilaMoE's scale-out recipe (8 experts, top-2, exact copies, router N(0, 0.02),
// aux loss 0.001, z-loss 0.01). The maths is in docs/transforms.md, section "Upcycle".
#include <cstdint>
#include <string>

#include "models/model_config.hpp"

namespace metamorph {

struct UpcycleOptions {
  // The coarse shape: `experts` copies of the dense FFN, `top_k` of them per token.
  std::int64_t experts = 8;
  std::int64_t top_k = 2;
  // Fine-grained upcycling: every copy is cut into `granularity` segments along the intermediate
  // dimension, each segment an expert. The MoE then has experts * G experts of size f / G and
  // routes top_k * G of them per token (the same active parameters as the coarse MoE).
  std::int64_t granularity = 1;
  // A shared expert `shared_experts` times the dense FFN's size (N copies of it side by side);
  // 0: none. It carries `shared_fraction` of the dense FFN's output at initialisation and the
  // routed experts the rest, so the sum stays the dense FFN (1: routed experts start silent,
  // 0: the shared expert starts silent).
  std::int64_t shared_experts = 0;
  double shared_fraction = 0.5;
  bool shared_expert_gate = false;  // Qwen2-MoE sigmoid gate on the shared expert (starts at 1/2)

  RouterScoring scoring = RouterScoring::softmax_then_topk;
  bool norm_topk_prob = true;  // renormalised gates: needed for the upcycled model to be exact
  double router_std = 0.02;    // router weights N(0, router_std); 0: a zero router
  // Fine-grained: the G segments of a copy share one router row (so a token picks whole copies
  // and the upcycled model is exact with a random router), or each draws its own.
  bool independent_segment_routers = false;
  // Symmetry breaking between the copies (both 0: exact copies).
  double noise = 0.0;          // N(0, (noise * rms)^2) on every routed expert weight
  double drop_fraction = 0.0;  // Drop-Upcycling: this fraction of each expert's intermediate
                               // units re-drawn from the dense weights' mean and std
  std::uint64_t seed = 1234;

  // MoE settings for the training that follows, written into the config.
  double aux_loss_coef = 0.001;
  double z_loss_coef = 0.01;
  double capacity_factor = 0.0;  // 0: dropless
  std::int64_t first_dense_layers = 0;
  std::int64_t sparse_step = 1;
};

// "softmax_then_topk" | "topk_then_softmax" | "sigmoid_bias"; InputError naming the valid ones.
RouterScoring parse_router_scoring_option(const std::string& name);

// The MoE config upcycling `dense` with `options` gives (vocabulary, attention, norms unchanged;
// expert size f / G, top_k * G of experts * G experts). Throws InputError naming the bad option
// and what would be valid: an MoE source, fewer than 2 experts, top-k outside [1, experts],
// a granularity that does not divide the FFN size, fractions outside their range, no MoE layer.
ModelConfig upcycled_config(const ModelConfig& dense, const UpcycleOptions& options);

// Parameters per token of the MoE: everything except the experts a token is not routed to.
std::int64_t active_parameter_count(const ModelConfig& config);

}  // namespace metamorph

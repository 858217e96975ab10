#include "models/tensor_parallel.hpp"

namespace metamorph {

int tp_split_dim(const std::string& name) {
  for (const char* rows : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias",
                           "k_proj.bias", "v_proj.bias", "gate_proj.weight", "up_proj.weight",
                           "embed_tokens.weight", "lm_head.weight"})
    if (name.ends_with(rows)) return 0;
  for (const char* cols : {"o_proj.weight", "down_proj.weight"})
    if (name.ends_with(cols)) return 1;
  return -1;
}

bool tp_partial_gradient(const std::string& name) {
  // Router and shared-expert gate weights: replicated, but their gradients come from the
  // experts' TP-partial outputs (docs/parallelism.md, tokens under tensor parallelism).
  return name.ends_with("q_norm.weight") || name.ends_with("k_norm.weight") ||
         name.ends_with("mlp.gate.weight") || name.ends_with("mlp.shared_expert_gate.weight");
}

}  // namespace metamorph

#include "models/tensor_parallel.hpp"

namespace metamorph {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

int tp_split_dim(const std::string& name) {
  for (const char* rows : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias",
                           "k_proj.bias", "v_proj.bias", "gate_proj.weight", "up_proj.weight",
                           "embed_tokens.weight", "lm_head.weight"})
    if (ends_with(name, rows)) return 0;
  for (const char* cols : {"o_proj.weight", "down_proj.weight"})
    if (ends_with(name, cols)) return 1;
  return -1;
}

bool tp_partial_gradient(const std::string& name) {
  return ends_with(name, "q_norm.weight") || ends_with(name, "k_norm.weight");
}

}  // namespace metamorph

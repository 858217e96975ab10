#include "models/hf_names.hpp"

#include <utility>
#include <vector>

namespace metamorph {

namespace {

bool replace_once(std::string& s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  if (at == std::string::npos) return false;
  s.replace(at, from.size(), to);
  return true;
}

// Mixtral's experts name their projections by the paper's w1 (gate), w3 (up), w2 (down).
const std::vector<std::pair<std::string, std::string>> kMixtralExpert = {
    {".gate_proj.weight", ".w1.weight"},
    {".up_proj.weight", ".w3.weight"},
    {".down_proj.weight", ".w2.weight"}};

}  // namespace

std::string hf_parameter_name(const std::string& canonical, const std::string& model_type) {
  std::string name = canonical;
  if (model_type == "mixtral") {
    const bool router = name.ends_with(".mlp.gate.weight");
    const bool expert = name.find(".mlp.experts.") != std::string::npos;
    if (router || expert) replace_once(name, ".mlp.", ".block_sparse_moe.");
    if (expert)
      for (const auto& [from, to] : kMixtralExpert)
        if (name.ends_with(from)) replace_once(name, from, to);
  } else if (model_type == "deepseek_v3" || model_type == "deepseek_v2") {
    replace_once(name, ".mlp.shared_expert.", ".mlp.shared_experts.");
  }
  return name;
}

std::string canonical_parameter_name(const std::string& hf_name, const std::string& model_type) {
  std::string name = hf_name;
  if (model_type == "mixtral") {
    if (replace_once(name, ".block_sparse_moe.", ".mlp.") &&
        name.find(".mlp.experts.") != std::string::npos)
      for (const auto& [canonical, mixtral] : kMixtralExpert)
        if (name.ends_with(mixtral)) replace_once(name, mixtral, canonical);
  } else if (model_type == "deepseek_v3" || model_type == "deepseek_v2") {
    replace_once(name, ".mlp.shared_experts.", ".mlp.shared_expert.");
  }
  return name;
}

}  // namespace metamorph

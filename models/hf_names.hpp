#pragma once
// Parameter names in Hugging Face checkpoints of a given model_type. metamorph's canonical names
// are the Llama/Qwen2/Qwen2-MoE ones; Mixtral calls its MoE block `block_sparse_moe` with experts
// w1/w3/w2 (= gate/up/down), DeepSeek-V3 its shared expert `shared_experts`.
#include <string>

namespace metamorph {

// The name `canonical` has in a checkpoint of `model_type` (the canonical name when that
// architecture uses it).
std::string hf_parameter_name(const std::string& canonical, const std::string& model_type);
// The inverse: the canonical name of a tensor named `hf_name` in a `model_type` checkpoint.
std::string canonical_parameter_name(const std::string& hf_name, const std::string& model_type);

}  // namespace metamorph

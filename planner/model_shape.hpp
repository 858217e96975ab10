#pragma once
// The planner's view of a transformer: the shapes that decide parameter counts, FLOPs and
// activation sizes. Parsed from the same Hugging Face style config.json the trainer reads.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace metamorph::planner {

struct ModelShape {
  std::string name;
  int64_t vocab_size = 0;
  int64_t hidden = 0;
  int64_t ffn = 0;  // dense MLP intermediate size
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  bool tie_embeddings = false;
  bool attention_bias = false;
  bool qk_norm = false;  // Qwen3: RMSNorm weights (head_dim) on q and k in every layer
  bool mlp_bias = false;
  bool gated_mlp = true;           // SwiGLU: gate, up, down; otherwise GELU: up, down
  bool learned_positions = false;  // GPT-style position table of max_positions rows
  int64_t max_positions = 0;
  // Activation-memory switches: GPT-3 era models keep dropout masks and materialise the
  // attention matrix; modern ones use no dropout and flash attention.
  bool dropout = false;
  bool flash_attention = true;

  // Mixture of experts (num_experts == 0: dense).
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t moe_ffn = 0;              // per-expert intermediate size
  int64_t shared_expert_ffn = 0;    // total intermediate size of the always-on shared experts
  bool shared_expert_gate = false;  // Qwen2-MoE: a [1, h] sigmoid gate on the shared expert
  bool router_bias = false;         // DeepSeek-V3 sigmoid scoring: an [E] balancing bias
  int64_t moe_every = 1;            // every moe_every-th layer is MoE (decoder_sparse_step)
  int64_t first_dense = 0;          // the first layers stay dense (first_k_dense_replace)
  // metamorph.capacity_factor: an expert takes at most ceil(cf x tokens x k / E) rows of a
  // forward (over its EP group); 0: dropless.
  double capacity_factor = 0;
  std::vector<int64_t> dense_layers;  // explicit dense layers (mlp_only_layers)

  bool is_moe() const { return num_experts > 0; }
  bool layer_is_moe(int64_t layer) const;
  int64_t num_moe_layers() const;
  int64_t attention_width() const { return heads * head_dim; }
  int64_t kv_width() const { return kv_heads * head_dim; }
};

// Parameter counts by role; "active" is what one token touches (top_k of the experts).
struct ParameterCounts {
  int64_t embedding = 0;  // token (and position) table
  int64_t lm_head = 0;    // 0 when tied to the embedding
  int64_t attention_per_layer = 0;
  int64_t norms_per_layer = 0;
  int64_t dense_mlp_per_layer = 0;
  int64_t expert = 0;                   // one routed expert
  int64_t router_per_layer = 0;         // per MoE layer
  int64_t shared_expert_per_layer = 0;  // per MoE layer
  int64_t final_norm = 0;
  int64_t total = 0;
  int64_t active = 0;
};

ParameterCounts count_parameters(const ModelShape& shape);

// Parameters of one layer on the attention/dense side (everything except routed experts) and
// of its routed experts (all of them).
int64_t non_expert_parameters_of_layer(const ModelShape& shape, int64_t layer);
int64_t expert_parameters_of_layer(const ModelShape& shape, int64_t layer);

// Model FLOPs of one training token (forward + backward, no recompute), the Megatron-LM
// convention: 6 x active matmul parameters (the LM head included, embedding lookups not) plus
// 12 x layers x seq x attention width for the attention scores and their use (causal masking
// not discounted). seq is the length the attention sees.
double training_flops_per_token(const ModelShape& shape, int64_t seq);
// The forward FLOPs of one token through layer `layer` split by kind, for the time model.
struct LayerFlops {
  double dense_gemm = 0;   // attention projections, dense MLP, shared experts, router
  double expert_gemm = 0;  // routed experts (top_k of them)
  double attention = 0;    // scores and weighted sum
};
LayerFlops forward_flops_per_token(const ModelShape& shape, int64_t layer, int64_t seq);
double lm_head_forward_flops_per_token(const ModelShape& shape);

// Parses an HF-style config. Throws InputError naming the field that is missing or wrong.
ModelShape model_shape_from_json(const nlohmann::json& config);
ModelShape load_model_shape(const std::filesystem::path& path);
// The config file as JSON (every field kept, for plan.json and the trainer); throws InputError
// naming the path when it cannot be read or parsed.
nlohmann::json load_model_config(const std::filesystem::path& path);
// The config back as JSON (HF names plus a "metamorph" block); round-trips through the parser.
nlohmann::json model_shape_to_json(const ModelShape& shape);

}  // namespace metamorph::planner

#pragma once
// The transformer a run trains, read from a Hugging Face style config.json (Llama, Qwen2,
// Qwen3, Mixtral, Qwen2-MoE, DeepSeek-V3 field names). metamorph's own extras live under the
// "metamorph" key.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

// How a router turns its logits into the k experts of a token and their gates.
enum class RouterScoring {
  softmax_then_topk,  // Qwen-MoE: softmax over all E, top-k; renormalised if norm_topk_prob
  topk_then_softmax,  // Mixtral: top-k logits, softmax over those k
  sigmoid_bias,       // DeepSeek-V3: sigmoid scores, top-k of score + balancing bias (no
                      // gradient; nudged towards balance each step), gates = renormalised scores
};
std::string router_scoring_name(RouterScoring scoring);

// The Mixture-of-Experts part of a config; num_experts == 0 means a dense model.
struct MoeConfig {
  std::int64_t num_experts = 0;
  std::int64_t top_k = 0;
  std::int64_t expert_intermediate_size = 0;         // moe_intermediate_size
  std::int64_t shared_expert_intermediate_size = 0;  // 0: no shared expert
  bool shared_expert_gate = false;  // Qwen2-MoE: shared output * sigmoid(x . w_gate)
  RouterScoring scoring = RouterScoring::softmax_then_topk;
  bool norm_topk_prob = true;           // renormalise the k gates to sum to 1
  double aux_loss_coef = 0.001;         // switch-style load-balancing loss
  double z_loss_coef = 0.0;             // router z-loss
  double bias_update_rate = 0.001;      // sigmoid_bias: balancing-bias step per training step
  double capacity_factor = 0.0;         // 0: dropless; else tokens per expert capped at
                                        // ceil(capacity_factor * tokens * k / E)
  std::int64_t sparse_step = 1;         // MoE on layers with (layer + 1) % sparse_step == 0
  std::int64_t first_dense_layers = 0;  // the first k layers stay dense
  // Benchmark only (`metamorph train --moe-force-balance`): every token's k experts are a fixed
  // balanced assignment instead of the router's choice (RouterSpec::force_balance). A run
  // option, never read from or written to a config file, so a checkpoint does not carry it.
  bool force_balance = false;

  bool enabled() const { return num_experts > 0; }
};

struct ModelConfig {
  // The architecture an HF config names (llama, qwen2, mixtral, qwen2_moe, deepseek_v3...):
  // it picks defaults and, on export, the tensor names.
  std::string model_type;
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;  // hidden_size / num_heads unless given
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  std::int64_t max_position_embeddings = 2048;
  bool attention_bias = false;  // Qwen2: biases on q, k, v projections
  bool qk_norm = false;         // Qwen3: RMSNorm over head_dim on q and k
  double initializer_range = 0.02;

  MoeConfig moe;

  std::int64_t q_size() const { return num_heads * head_dim; }
  // Whether decoder layer `layer` has an MoE block instead of the dense MLP.
  bool is_moe_layer(std::int64_t layer) const {
    return moe.enabled() && layer >= moe.first_dense_layers && (layer + 1) % moe.sparse_step == 0;
  }
  std::int64_t kv_size() const { return num_kv_heads * head_dim; }
};

// Validates every field; throws InputError naming the field and what would be valid.
ModelConfig model_config_from_json(const nlohmann::json& json);
ModelConfig load_model_config(const std::string& path);
// HF-compatible config.json content for this config (round-trips through model_config_from_json).
nlohmann::json model_config_to_json(const ModelConfig& config);

struct ParameterSpec {
  std::string name;       // canonical global name, Hugging Face naming
  Shape shape;            // global shape, PyTorch [out, in] layout
  bool weight_decay;      // false for norms and biases
  bool trainable = true;  // false for state updated by a rule (the router balancing bias)
};

// Canonical names of MoE parameters (Qwen2-MoE naming; Mixtral and DeepSeek names are mapped
// on import/export). `layer_prefix` is "model.layers.<l>.".
//   <p>mlp.gate.weight                      [E, h]   router
//   <p>mlp.gate.e_score_correction_bias     [E]      sigmoid_bias only, not trainable
//   <p>mlp.experts.<e>.{gate,up}_proj.weight [f_e, h]; down_proj.weight [h, f_e]
//   <p>mlp.shared_expert.{gate,up}_proj.weight [f_s, h]; down_proj.weight [h, f_s]
//   <p>mlp.shared_expert_gate.weight        [1, h]   when shared_expert_gate
std::string expert_prefix(std::int64_t layer, std::int64_t expert);
// The decoder layer l of a parameter named "model.layers.<l>. ..."; nullopt for the embedding,
// the final norm and the LM head.
std::optional<std::int64_t> decoder_layer_of(const std::string& name);
// The layer after whose backward a parameter's gradient is final, in the order the model's
// gradients-ready hook reports layers (Transformer::set_gradients_ready_hook): its decoder
// layer; for the final norm and LM head any layer (the largest int64); -1 for the embedding,
// final only after the whole backward (a tied copy, and the pipeline stages' copies, are summed
// into it then).
std::int64_t gradient_ready_layer(const std::string& name);

// Every parameter of the model, in construction order.
std::vector<ParameterSpec> parameter_specs(const ModelConfig& config);
std::int64_t parameter_count(const ModelConfig& config);

}  // namespace metamorph

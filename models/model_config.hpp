#pragma once
// The transformer a run trains, read from a Hugging Face style config.json (Llama, Qwen2,
// Qwen3 field names; MoE fields arrive with the MoE layers). metamorph's own extras live under
// the "metamorph" key.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

struct ModelConfig {
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

  std::int64_t q_size() const { return num_heads * head_dim; }
  std::int64_t kv_size() const { return num_kv_heads * head_dim; }
};

// Validates every field; throws InputError naming the field and what would be valid.
ModelConfig model_config_from_json(const nlohmann::json& json);
ModelConfig load_model_config(const std::string& path);
// HF-compatible config.json content for this config (round-trips through model_config_from_json).
nlohmann::json model_config_to_json(const ModelConfig& config);

struct ParameterSpec {
  std::string name;   // canonical global name, Hugging Face naming
  Shape shape;        // global shape, PyTorch [out, in] layout
  bool weight_decay;  // false for norms and biases
};

// Every parameter of the model, in construction order.
std::vector<ParameterSpec> parameter_specs(const ModelConfig& config);
std::int64_t parameter_count(const ModelConfig& config);

}  // namespace metamorph

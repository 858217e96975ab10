#include "models/model_config.hpp"

#include <fstream>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

std::int64_t positive_int(const nlohmann::json& json, const char* field, bool required,
                          std::int64_t fallback) {
  if (!json.contains(field) || json[field].is_null()) {
    require(!required, "model config: missing field '", field, "' (a positive integer)");
    return fallback;
  }
  const auto& v = json[field];
  require(v.is_number_integer(), "model config: '", field, "' must be an integer, got ", v.dump());
  const auto value = v.get<std::int64_t>();
  require(value > 0, "model config: '", field, "' must be positive, got ", value);
  return value;
}

double positive_real(const nlohmann::json& json, const char* field, double fallback) {
  if (!json.contains(field) || json[field].is_null()) return fallback;
  const auto& v = json[field];
  require(v.is_number(), "model config: '", field, "' must be a number, got ", v.dump());
  const double value = v.get<double>();
  require(value > 0, "model config: '", field, "' must be positive, got ", value);
  return value;
}

bool boolean(const nlohmann::json& json, const char* field, bool fallback) {
  if (!json.contains(field) || json[field].is_null()) return fallback;
  require(json[field].is_boolean(), "model config: '", field, "' must be true or false, got ",
          json[field].dump());
  return json[field].get<bool>();
}

}  // namespace

ModelConfig model_config_from_json(const nlohmann::json& json) {
  require(json.is_object(), "model config: expected a JSON object");
  ModelConfig c;
  c.vocab_size = positive_int(json, "vocab_size", true, 0);
  c.hidden_size = positive_int(json, "hidden_size", true, 0);
  c.intermediate_size = positive_int(json, "intermediate_size", true, 0);
  c.num_layers = positive_int(json, "num_hidden_layers", true, 0);
  c.num_heads = positive_int(json, "num_attention_heads", true, 0);
  c.num_kv_heads = positive_int(json, "num_key_value_heads", false, c.num_heads);
  const bool explicit_head_dim = json.contains("head_dim") && !json["head_dim"].is_null();
  if (!explicit_head_dim) {
    require(c.hidden_size % c.num_heads == 0, "model config: num_attention_heads (", c.num_heads,
            ") must divide hidden_size (", c.hidden_size, ") when head_dim is not given");
  }
  c.head_dim = positive_int(json, "head_dim", false, c.hidden_size / c.num_heads);
  require(c.head_dim % 2 == 0, "model config: head_dim must be even for RoPE, got ", c.head_dim);
  require(c.num_heads % c.num_kv_heads == 0, "model config: num_key_value_heads (", c.num_kv_heads,
          ") must divide num_attention_heads (", c.num_heads, ")");
  c.rope_theta = positive_real(json, "rope_theta", 10000.0);
  c.rms_norm_eps = positive_real(json, "rms_norm_eps", 1e-6);
  c.tie_word_embeddings = boolean(json, "tie_word_embeddings", false);
  c.max_position_embeddings = positive_int(json, "max_position_embeddings", false, 2048);
  c.attention_bias = boolean(json, "attention_bias", false);
  c.initializer_range = positive_real(json, "initializer_range", 0.02);
  // Qwen3 configs name their architecture; metamorph's extras may force it either way.
  bool qk_norm = false;
  if (json.contains("model_type") && json["model_type"].is_string())
    qk_norm = json["model_type"].get<std::string>().rfind("qwen3", 0) == 0;
  if (json.contains("metamorph") && json["metamorph"].is_object())
    qk_norm = boolean(json["metamorph"], "qk_norm", qk_norm);
  c.qk_norm = qk_norm;
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path);
  require(in.good(), "model config ", path, ": cannot open the file");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat("model config ", path, ": not valid JSON (", e.what(), ")"));
  }
  try {
    return model_config_from_json(json);
  } catch (const InputError& e) {
    throw InputError(concat(path, ": ", e.what()));
  }
}

nlohmann::json model_config_to_json(const ModelConfig& c) {
  nlohmann::json json = {
      {"model_type", c.qk_norm ? "qwen3" : (c.attention_bias ? "qwen2" : "llama")},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"rope_theta", c.rope_theta},
      {"rms_norm_eps", c.rms_norm_eps},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"max_position_embeddings", c.max_position_embeddings},
      {"attention_bias", c.attention_bias},
      {"initializer_range", c.initializer_range},
      {"hidden_act", "silu"},
      {"metamorph", {{"qk_norm", c.qk_norm}}},
  };
  return json;
}

std::vector<ParameterSpec> parameter_specs(const ModelConfig& c) {
  std::vector<ParameterSpec> specs;
  const std::int64_t h = c.hidden_size;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, h}, true});
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    specs.push_back({p + "input_layernorm.weight", {h}, false});
    specs.push_back({p + "self_attn.q_proj.weight", {c.q_size(), h}, true});
    specs.push_back({p + "self_attn.k_proj.weight", {c.kv_size(), h}, true});
    specs.push_back({p + "self_attn.v_proj.weight", {c.kv_size(), h}, true});
    if (c.attention_bias) {
      specs.push_back({p + "self_attn.q_proj.bias", {c.q_size()}, false});
      specs.push_back({p + "self_attn.k_proj.bias", {c.kv_size()}, false});
      specs.push_back({p + "self_attn.v_proj.bias", {c.kv_size()}, false});
    }
    if (c.qk_norm) {
      specs.push_back({p + "self_attn.q_norm.weight", {c.head_dim}, false});
      specs.push_back({p + "self_attn.k_norm.weight", {c.head_dim}, false});
    }
    specs.push_back({p + "self_attn.o_proj.weight", {h, c.q_size()}, true});
    specs.push_back({p + "post_attention_layernorm.weight", {h}, false});
    specs.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, h}, true});
    specs.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, h}, true});
    specs.push_back({p + "mlp.down_proj.weight", {h, c.intermediate_size}, true});
  }
  specs.push_back({"model.norm.weight", {h}, false});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, h}, true});
  return specs;
}

std::int64_t parameter_count(const ModelConfig& config) {
  std::int64_t n = 0;
  for (const auto& s : parameter_specs(config)) n += shape_numel(s.shape);
  return n;
}

}  // namespace metamorph

#include "models/model_config.hpp"

#include <fstream>
#include <limits>

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

std::string string_field(const nlohmann::json& json, const char* field,
                         const std::string& fallback) {
  if (!json.contains(field) || json[field].is_null()) return fallback;
  require(json[field].is_string(), "model config: '", field, "' must be a string, got ",
          json[field].dump());
  return json[field].get<std::string>();
}

RouterScoring parse_router_scoring(const std::string& name) {
  if (name == "softmax_then_topk") return RouterScoring::softmax_then_topk;
  if (name == "topk_then_softmax") return RouterScoring::topk_then_softmax;
  if (name == "sigmoid_bias") return RouterScoring::sigmoid_bias;
  throw InputError(concat("model config: router_scoring '", name,
                          "' is not one of softmax_then_topk, topk_then_softmax, sigmoid_bias"));
}

// MoE fields under their Mixtral, Qwen2-MoE and DeepSeek-V3 names; defaults follow the
// architecture named by model_type so that an HF config means what it means there.
MoeConfig moe_config_from_json(const nlohmann::json& json, const ModelConfig& c,
                               const std::string& model_type) {
  MoeConfig m;
  const nlohmann::json none = nlohmann::json::object();
  const auto& extra =
      json.contains("metamorph") && json["metamorph"].is_object() ? json["metamorph"] : none;
  const char* experts_field = json.contains("num_local_experts")  ? "num_local_experts"
                              : json.contains("n_routed_experts") ? "n_routed_experts"
                                                                  : "num_experts";
  m.num_experts = positive_int(json, experts_field, false, 0);
  if (m.num_experts == 0) return m;
  m.top_k = positive_int(json, "num_experts_per_tok", true, 0);
  require(m.top_k <= m.num_experts, "model config: num_experts_per_tok (", m.top_k,
          ") must be at most the number of experts (", m.num_experts, ")");
  m.expert_intermediate_size =
      positive_int(json, "moe_intermediate_size", false, c.intermediate_size);
  if (json.contains("n_shared_experts") && !json["n_shared_experts"].is_null())
    m.shared_expert_intermediate_size =
        positive_int(json, "n_shared_experts", false, 0) * m.expert_intermediate_size;
  else
    m.shared_expert_intermediate_size =
        positive_int(json, "shared_expert_intermediate_size", false, 0);
  m.shared_expert_gate =
      boolean(extra, "shared_expert_gate",
              model_type == "qwen2_moe" && m.shared_expert_intermediate_size > 0);
  require(!m.shared_expert_gate || m.shared_expert_intermediate_size > 0,
          "model config: shared_expert_gate needs shared_expert_intermediate_size > 0");
  RouterScoring scoring = RouterScoring::softmax_then_topk;
  if (model_type == "mixtral") scoring = RouterScoring::topk_then_softmax;
  if (string_field(json, "scoring_func", "softmax") == "sigmoid")
    scoring = RouterScoring::sigmoid_bias;
  m.scoring =
      parse_router_scoring(string_field(extra, "router_scoring", router_scoring_name(scoring)));
  m.norm_topk_prob = boolean(json, "norm_topk_prob", model_type != "qwen2_moe");
  m.aux_loss_coef = json.contains("router_aux_loss_coef") && !json["router_aux_loss_coef"].is_null()
                        ? json["router_aux_loss_coef"].get<double>()
                        : 0.001;
  require(m.aux_loss_coef >= 0, "model config: router_aux_loss_coef must be >= 0, got ",
          m.aux_loss_coef);
  m.z_loss_coef = json.contains("router_z_loss_coef") && !json["router_z_loss_coef"].is_null()
                      ? json["router_z_loss_coef"].get<double>()
                      : 0.0;
  require(m.z_loss_coef >= 0, "model config: router_z_loss_coef must be >= 0, got ", m.z_loss_coef);
  m.bias_update_rate = positive_real(extra, "bias_update_rate", 0.001);
  if (extra.contains("capacity_factor") && !extra["capacity_factor"].is_null()) {
    require(extra["capacity_factor"].is_number(),
            "model config: metamorph.capacity_factor must be a number, got ",
            extra["capacity_factor"].dump());
    m.capacity_factor = extra["capacity_factor"].get<double>();
    require(m.capacity_factor > 0,
            "model config: metamorph.capacity_factor must be > 0 (omit it "
            "for dropless routing), got ",
            m.capacity_factor);
  }
  m.sparse_step = positive_int(json, "decoder_sparse_step", false, 1);
  if (json.contains("first_k_dense_replace") && !json["first_k_dense_replace"].is_null()) {
    require(json["first_k_dense_replace"].is_number_integer() &&
                json["first_k_dense_replace"].get<std::int64_t>() >= 0,
            "model config: first_k_dense_replace must be an integer >= 0, got ",
            json["first_k_dense_replace"].dump());
    m.first_dense_layers = json["first_k_dense_replace"].get<std::int64_t>();
  }
  return m;
}

}  // namespace

std::string router_scoring_name(RouterScoring scoring) {
  switch (scoring) {
    case RouterScoring::softmax_then_topk:
      return "softmax_then_topk";
    case RouterScoring::topk_then_softmax:
      return "topk_then_softmax";
    case RouterScoring::sigmoid_bias:
      return "sigmoid_bias";
  }
  return "?";
}

std::string expert_prefix(std::int64_t layer, std::int64_t expert) {
  return "model.layers." + std::to_string(layer) + ".mlp.experts." + std::to_string(expert) + ".";
}

std::optional<std::int64_t> decoder_layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  return std::stoll(name.substr(prefix.size()));
}

std::int64_t gradient_ready_layer(const std::string& name) {
  if (const auto layer = decoder_layer_of(name)) return *layer;
  if (name == "model.embed_tokens.weight") return -1;
  return std::numeric_limits<std::int64_t>::max();  // model.norm.weight, lm_head.weight
}

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
  // transformers 5 writes rope_theta inside rope_parameters; older configs at the top level.
  const bool nested_rope = !json.contains("rope_theta") && json.contains("rope_parameters") &&
                           json["rope_parameters"].is_object();
  c.rope_theta = positive_real(nested_rope ? json["rope_parameters"] : json, "rope_theta", 10000.0);
  c.rms_norm_eps = positive_real(json, "rms_norm_eps", 1e-6);
  c.tie_word_embeddings = boolean(json, "tie_word_embeddings", false);
  c.max_position_embeddings = positive_int(json, "max_position_embeddings", false, 2048);
  c.attention_bias = boolean(json, "attention_bias", false);
  c.initializer_range = positive_real(json, "initializer_range", 0.02);
  // Qwen3 configs name their architecture; metamorph's extras may force it either way.
  bool qk_norm = false;
  const std::string model_type = json.contains("model_type") && json["model_type"].is_string()
                                     ? json["model_type"].get<std::string>()
                                     : std::string();
  qk_norm = model_type.rfind("qwen3", 0) == 0;
  c.model_type = model_type;
  if (json.contains("metamorph") && json["metamorph"].is_object())
    qk_norm = boolean(json["metamorph"], "qk_norm", qk_norm);
  c.qk_norm = qk_norm;
  c.moe = moe_config_from_json(json, c, model_type);
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
  if (c.moe.enabled()) {
    const MoeConfig& m = c.moe;
    // Every MoE field is written explicitly below, so an MoE architecture's own defaults do not
    // matter on the way back; its name still selects its tensor names on export.
    const bool named = c.model_type == "mixtral" || c.model_type.rfind("deepseek", 0) == 0;
    json["model_type"] = named ? c.model_type : "qwen2_moe";
    json["num_experts"] = m.num_experts;
    if (c.model_type == "mixtral") json["num_local_experts"] = m.num_experts;
    json["num_experts_per_tok"] = m.top_k;
    json["moe_intermediate_size"] = m.expert_intermediate_size;
    if (m.shared_expert_intermediate_size > 0)
      json["shared_expert_intermediate_size"] = m.shared_expert_intermediate_size;
    json["norm_topk_prob"] = m.norm_topk_prob;
    json["router_aux_loss_coef"] = m.aux_loss_coef;
    json["router_z_loss_coef"] = m.z_loss_coef;
    json["decoder_sparse_step"] = m.sparse_step;
    json["first_k_dense_replace"] = m.first_dense_layers;
    auto& extra = json["metamorph"];
    extra["shared_expert_gate"] = m.shared_expert_gate;
    extra["router_scoring"] = router_scoring_name(m.scoring);
    extra["bias_update_rate"] = m.bias_update_rate;
    if (m.capacity_factor > 0) extra["capacity_factor"] = m.capacity_factor;
  }
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
    if (!c.is_moe_layer(l)) {
      specs.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, h}, true});
      specs.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, h}, true});
      specs.push_back({p + "mlp.down_proj.weight", {h, c.intermediate_size}, true});
      continue;
    }
    const MoeConfig& m = c.moe;
    specs.push_back({p + "mlp.gate.weight", {m.num_experts, h}, true});
    if (m.scoring == RouterScoring::sigmoid_bias)
      specs.push_back({p + "mlp.gate.e_score_correction_bias", {m.num_experts}, false, false});
    for (std::int64_t e = 0; e < m.num_experts; ++e) {
      const std::string ep = expert_prefix(l, e);
      const std::int64_t f = m.expert_intermediate_size;
      specs.push_back({ep + "gate_proj.weight", {f, h}, true});
      specs.push_back({ep + "up_proj.weight", {f, h}, true});
      specs.push_back({ep + "down_proj.weight", {h, f}, true});
    }
    if (m.shared_expert_intermediate_size > 0) {
      const std::int64_t f = m.shared_expert_intermediate_size;
      specs.push_back({p + "mlp.shared_expert.gate_proj.weight", {f, h}, true});
      specs.push_back({p + "mlp.shared_expert.up_proj.weight", {f, h}, true});
      specs.push_back({p + "mlp.shared_expert.down_proj.weight", {h, f}, true});
      if (m.shared_expert_gate)
        specs.push_back({p + "mlp.shared_expert_gate.weight", {1, h}, false});
    }
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

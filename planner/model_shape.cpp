#include "planner/model_shape.hpp"

#include <algorithm>
#include <fstream>

#include "runtime/core/error.hpp"

namespace metamorph::planner {

namespace {

using nlohmann::json;

// A positive integer field; `fallback` < 0 means the field is required.
int64_t positive_field(const json& config, const char* key, int64_t fallback = -1) {
  if (!config.contains(key) || config[key].is_null()) {
    require(fallback >= 0, "model config: missing field '", key, "' (a positive integer)");
    return fallback;
  }
  const json& value = config[key];
  require(
      value.is_number_integer() ||
          (value.is_number() && value.get<double>() == static_cast<int64_t>(value.get<double>())),
      "model config: field '", key, "' must be a positive integer, got ", value.dump());
  const auto number = value.get<int64_t>();
  require(number > 0, "model config: field '", key, "' must be a positive integer, got ", number);
  return number;
}

bool bool_field(const json& config, const char* key, bool fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  require(config[key].is_boolean(), "model config: field '", key, "' must be true or false, got ",
          config[key].dump());
  return config[key].get<bool>();
}

bool is_gelu(const std::string& activation) {
  return activation.rfind("gelu", 0) == 0;
}

}  // namespace

bool ModelShape::layer_is_moe(int64_t layer) const {
  if (!is_moe() || layer < first_dense) return false;
  if (std::find(dense_layers.begin(), dense_layers.end(), layer) != dense_layers.end())
    return false;
  return (layer + 1) % moe_every == 0;
}

int64_t ModelShape::num_moe_layers() const {
  int64_t count = 0;
  for (int64_t i = 0; i < layers; ++i) count += layer_is_moe(i) ? 1 : 0;
  return count;
}

ParameterCounts count_parameters(const ModelShape& s) {
  ParameterCounts c;
  const int64_t h = s.hidden;
  c.embedding = s.vocab_size * h + (s.learned_positions ? s.max_positions * h : 0);
  c.lm_head = s.tie_embeddings ? 0 : s.vocab_size * h;
  c.attention_per_layer = h * s.head_dim * (2 * s.heads + 2 * s.kv_heads);
  if (s.attention_bias) c.attention_per_layer += s.attention_width() + 2 * s.kv_width();
  if (s.qk_norm) c.attention_per_layer += 2 * s.head_dim;
  if (s.mlp_bias) c.attention_per_layer += h;  // output projection bias (GPT style)
  // LayerNorm with bias in GPT-style models, RMSNorm weight otherwise.
  const int64_t norm = s.mlp_bias ? 2 * h : h;
  c.norms_per_layer = 2 * norm;
  c.final_norm = norm;
  const int64_t matrices = s.gated_mlp ? 3 : 2;
  c.dense_mlp_per_layer = matrices * h * s.ffn + (s.mlp_bias ? (matrices - 1) * s.ffn + h : 0);
  if (s.is_moe()) {
    c.expert = matrices * h * s.moe_ffn;
    c.router_per_layer = h * s.num_experts + (s.router_bias ? s.num_experts : 0);
    c.shared_expert_per_layer = matrices * h * s.shared_expert_ffn + (s.shared_expert_gate ? h : 0);
  }
  c.total = c.embedding + c.lm_head + c.final_norm;
  c.active = c.total;
  for (int64_t i = 0; i < s.layers; ++i) {
    c.total += non_expert_parameters_of_layer(s, i) + expert_parameters_of_layer(s, i);
    c.active += non_expert_parameters_of_layer(s, i) + (s.layer_is_moe(i) ? s.top_k * c.expert : 0);
  }
  return c;
}

int64_t non_expert_parameters_of_layer(const ModelShape& s, int64_t layer) {
  const int64_t h = s.hidden;
  int64_t n = h * s.head_dim * (2 * s.heads + 2 * s.kv_heads);
  if (s.attention_bias) n += s.attention_width() + 2 * s.kv_width();
  if (s.qk_norm) n += 2 * s.head_dim;
  if (s.mlp_bias) n += h;
  n += 2 * (s.mlp_bias ? 2 * h : h);
  const int64_t matrices = s.gated_mlp ? 3 : 2;
  if (s.layer_is_moe(layer)) {
    n += h * s.num_experts + matrices * h * s.shared_expert_ffn;
    if (s.shared_expert_gate) n += h;
    if (s.router_bias) n += s.num_experts;
  } else {
    n += matrices * h * s.ffn + (s.mlp_bias ? (matrices - 1) * s.ffn + h : 0);
  }
  return n;
}

int64_t expert_parameters_of_layer(const ModelShape& s, int64_t layer) {
  if (!s.layer_is_moe(layer)) return 0;
  return s.num_experts * (s.gated_mlp ? 3 : 2) * s.hidden * s.moe_ffn;
}

LayerFlops forward_flops_per_token(const ModelShape& s, int64_t layer, int64_t seq) {
  const double h = static_cast<double>(s.hidden);
  const double matrices = s.gated_mlp ? 3.0 : 2.0;
  LayerFlops f;
  f.dense_gemm = 2.0 * h * s.head_dim * (2.0 * s.heads + 2.0 * s.kv_heads);
  if (s.layer_is_moe(layer)) {
    f.dense_gemm += 2.0 * h * s.num_experts + 2.0 * matrices * h * s.shared_expert_ffn;
    f.expert_gemm = 2.0 * matrices * h * s.moe_ffn * s.top_k;
  } else {
    f.dense_gemm += 2.0 * matrices * h * s.ffn;
  }
  f.attention = 4.0 * static_cast<double>(seq) * s.attention_width();
  return f;
}

double lm_head_forward_flops_per_token(const ModelShape& s) {
  return 2.0 * static_cast<double>(s.vocab_size) * s.hidden;
}

double training_flops_per_token(const ModelShape& s, int64_t seq) {
  double forward = lm_head_forward_flops_per_token(s);
  for (int64_t i = 0; i < s.layers; ++i) {
    const auto f = forward_flops_per_token(s, i, seq);
    forward += f.dense_gemm + f.expert_gemm + f.attention;
  }
  return 3.0 * forward;
}

ModelShape model_shape_from_json(const json& config) {
  require(config.is_object(), "model config: expected a JSON object of Hugging Face config fields");
  ModelShape s;
  if (config.contains("name") && config["name"].is_string()) s.name = config["name"];
  s.vocab_size = positive_field(config, "vocab_size");
  s.hidden = positive_field(config, "hidden_size");
  s.layers = positive_field(config, "num_hidden_layers");
  s.heads = positive_field(config, "num_attention_heads");
  s.kv_heads = positive_field(config, "num_key_value_heads", s.heads);
  require(s.heads % s.kv_heads == 0, "model config: num_attention_heads (", s.heads,
          ") must be a multiple of num_key_value_heads (", s.kv_heads, ")");
  require(config.contains("head_dim") || s.hidden % s.heads == 0, "model config: hidden_size (",
          s.hidden, ") is not divisible by num_attention_heads (", s.heads,
          "); give head_dim explicitly");
  s.head_dim = positive_field(config, "head_dim", s.hidden / s.heads);
  s.tie_embeddings = bool_field(config, "tie_word_embeddings", false);
  s.attention_bias = bool_field(config, "attention_bias", false);
  // As the trainer reads it (models/model_config.cpp): Qwen3 configs, or metamorph.qk_norm.
  s.qk_norm = config.contains("model_type") && config["model_type"].is_string() &&
              config["model_type"].get<std::string>().rfind("qwen3", 0) == 0;
  if (config.contains("metamorph") && config["metamorph"].is_object() &&
      config["metamorph"].contains("qk_norm"))
    s.qk_norm = bool_field(config["metamorph"], "qk_norm", s.qk_norm);
  s.max_positions = positive_field(config, "max_position_embeddings", 0);
  if (config.contains("hidden_act")) {
    require(config["hidden_act"].is_string(), "model config: field 'hidden_act' must be a string");
    s.gated_mlp = !is_gelu(config["hidden_act"].get<std::string>());
  }

  const bool has_experts = config.contains("num_local_experts") || config.contains("num_experts");
  if (has_experts) {
    s.num_experts = positive_field(
        config, config.contains("num_local_experts") ? "num_local_experts" : "num_experts");
    s.top_k = positive_field(config, "num_experts_per_tok");
    require(s.top_k <= s.num_experts, "model config: num_experts_per_tok (", s.top_k,
            ") exceeds the number of experts (", s.num_experts, ")");
    // Mixtral sizes its experts with intermediate_size; Qwen-MoE uses moe_intermediate_size and
    // keeps intermediate_size for its dense layers.
    const bool dense_size_given =
        config.contains("intermediate_size") && config["intermediate_size"].is_number_integer();
    s.moe_ffn = positive_field(config, "moe_intermediate_size",
                               dense_size_given ? config["intermediate_size"].get<int64_t>() : -1);
    s.shared_expert_ffn = positive_field(config, "shared_expert_intermediate_size", 0);
    if (config.contains("n_shared_experts"))
      s.shared_expert_ffn = positive_field(config, "n_shared_experts") * s.moe_ffn;
    // As the trainer reads them (models/model_config.cpp).
    const std::string model_type = config.contains("model_type") && config["model_type"].is_string()
                                       ? config["model_type"].get<std::string>()
                                       : std::string();
    const bool has_extra = config.contains("metamorph") && config["metamorph"].is_object();
    s.shared_expert_gate = model_type == "qwen2_moe" && s.shared_expert_ffn > 0;
    if (has_extra && config["metamorph"].contains("shared_expert_gate"))
      s.shared_expert_gate = bool_field(config["metamorph"], "shared_expert_gate", false);
    s.router_bias = config.contains("scoring_func") && config["scoring_func"].is_string() &&
                    config["scoring_func"].get<std::string>() == "sigmoid";
    if (has_extra && config["metamorph"].contains("router_scoring") &&
        config["metamorph"]["router_scoring"].is_string())
      s.router_bias = config["metamorph"]["router_scoring"].get<std::string>() == "sigmoid_bias";
    s.moe_every =
        positive_field(config, "decoder_sparse_step", positive_field(config, "moe_layer_freq", 1));
    s.first_dense = positive_field(config, "first_k_dense_replace", 0);
    if (config.contains("mlp_only_layers")) {
      require(config["mlp_only_layers"].is_array(),
              "model config: field 'mlp_only_layers' must be a list of layer indices");
      for (const auto& v : config["mlp_only_layers"]) {
        require(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < s.layers,
                "model config: mlp_only_layers entry ", v.dump(), " is not a layer index in [0, ",
                s.layers, ")");
        s.dense_layers.push_back(v.get<int64_t>());
      }
    }
  }
  const bool needs_dense_ffn = !s.is_moe() || s.num_moe_layers() < s.layers;
  s.ffn = positive_field(config, "intermediate_size", needs_dense_ffn ? -1 : 0);

  if (config.contains("metamorph")) {
    const json& extra = config["metamorph"];
    require(extra.is_object(), "model config: field 'metamorph' must be an object");
    s.gated_mlp = bool_field(extra, "gated_mlp", s.gated_mlp);
    s.mlp_bias = bool_field(extra, "linear_bias", s.mlp_bias);
    s.dropout = bool_field(extra, "dropout", s.dropout);
    s.flash_attention = bool_field(extra, "flash_attention", s.flash_attention);
    s.learned_positions = bool_field(extra, "learned_positions", s.learned_positions);
    if (extra.contains("capacity_factor") && !extra["capacity_factor"].is_null()) {
      require(extra["capacity_factor"].is_number() && extra["capacity_factor"].get<double>() > 0,
              "model config: metamorph.capacity_factor must be a number > 0 (omit it for dropless "
              "routing), got ",
              extra["capacity_factor"].dump());
      s.capacity_factor = extra["capacity_factor"].get<double>();
    }
  }
  require(!s.learned_positions || s.max_positions > 0,
          "model config: learned_positions needs max_position_embeddings");
  return s;
}

json load_model_config(const std::filesystem::path& path) {
  std::ifstream in(path);
  require(in.good(), "--model ", path.string(), ": cannot open the file");
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw InputError(concat("--model ", path.string(), ": not valid JSON (", e.what(), ")"));
  }
}

ModelShape load_model_shape(const std::filesystem::path& path) {
  const json config = load_model_config(path);
  try {
    auto shape = model_shape_from_json(config);
    if (shape.name.empty()) shape.name = path.stem().string();
    return shape;
  } catch (const InputError& e) {
    throw InputError(concat(path.string(), ": ", e.what()));
  }
}

json model_shape_to_json(const ModelShape& s) {
  json j = {{"vocab_size", s.vocab_size},
            {"hidden_size", s.hidden},
            {"num_hidden_layers", s.layers},
            {"num_attention_heads", s.heads},
            {"num_key_value_heads", s.kv_heads},
            {"head_dim", s.head_dim},
            {"tie_word_embeddings", s.tie_embeddings},
            {"attention_bias", s.attention_bias}};
  if (!s.name.empty()) j["name"] = s.name;
  if (s.ffn > 0) j["intermediate_size"] = s.ffn;
  if (s.max_positions > 0) j["max_position_embeddings"] = s.max_positions;
  if (s.is_moe()) {
    j["num_local_experts"] = s.num_experts;
    j["num_experts_per_tok"] = s.top_k;
    j["moe_intermediate_size"] = s.moe_ffn;
    if (s.shared_expert_ffn > 0) j["shared_expert_intermediate_size"] = s.shared_expert_ffn;
    j["decoder_sparse_step"] = s.moe_every;
    if (s.first_dense > 0) j["first_k_dense_replace"] = s.first_dense;
    if (!s.dense_layers.empty()) j["mlp_only_layers"] = s.dense_layers;
  }
  j["metamorph"] = {{"gated_mlp", s.gated_mlp},
                    {"linear_bias", s.mlp_bias},
                    {"dropout", s.dropout},
                    {"flash_attention", s.flash_attention},
                    {"learned_positions", s.learned_positions}};
  if (s.capacity_factor > 0) j["metamorph"]["capacity_factor"] = s.capacity_factor;
  return j;
}

}  // namespace metamorph::planner

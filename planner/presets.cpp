#include "planner/presets.hpp"

#include <algorithm>
#include <cctype>

#include "runtime/core/error.hpp"

namespace metamorph::planner {

namespace {

using nlohmann::json;

// GPT-3 style models of the Megatron-LM papers: GELU MLP of 4h, biases, LayerNorm, learned
// positions, dropout, no flash attention, vocabulary 51200, sequence 2048.
json megatron_gpt(const std::string& name, int64_t hidden, int64_t heads, int64_t layers) {
  return {{"name", name},
          {"vocab_size", 51200},
          {"hidden_size", hidden},
          {"intermediate_size", 4 * hidden},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", heads},
          {"max_position_embeddings", 2048},
          {"hidden_act", "gelu"},
          {"attention_bias", true},
          {"tie_word_embeddings", true},
          {"metamorph",
           {{"linear_bias", true},
            {"dropout", true},
            {"flash_attention", false},
            {"learned_positions", true}}}};
}

json llama(const std::string& name, int64_t hidden, int64_t ffn, int64_t layers, int64_t heads,
           int64_t kv, int64_t vocab) {
  return {{"name", name},
          {"vocab_size", vocab},
          {"hidden_size", hidden},
          {"intermediate_size", ffn},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv},
          {"max_position_embeddings", 8192},
          {"rope_theta", 500000.0},
          {"rms_norm_eps", 1e-5},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false}};
}

json mixtral(const std::string& name, int64_t hidden, int64_t ffn, int64_t layers, int64_t heads,
             int64_t kv, int64_t vocab, int64_t experts) {
  json j = llama(name, hidden, ffn, layers, heads, kv, vocab);
  j["num_local_experts"] = experts;
  j["num_experts_per_tok"] = 2;
  j["max_position_embeddings"] = 32768;
  j["rope_theta"] = 1e6;
  j["router_aux_loss_coef"] = 0.02;
  return j;
}

std::vector<std::pair<std::string, json>> table() {
  json qwen_moe = {{"name", "qwen-moe-a2.7b"},
                   {"vocab_size", 151936},
                   {"hidden_size", 2048},
                   {"intermediate_size", 5632},
                   {"num_hidden_layers", 24},
                   {"num_attention_heads", 16},
                   {"num_key_value_heads", 16},
                   {"attention_bias", true},
                   {"max_position_embeddings", 8192},
                   {"hidden_act", "silu"},
                   {"num_experts", 60},
                   {"num_experts_per_tok", 4},
                   {"moe_intermediate_size", 1408},
                   {"shared_expert_intermediate_size", 5632},
                   {"decoder_sparse_step", 1},
                   {"norm_topk_prob", false},
                   {"tie_word_embeddings", false}};
  // AquilaMoE-like: 8 experts upcycled from a 16B-class dense model (hidden 5120, 40 layers).
  json aquila = mixtral("aquila-moe-8x16b", 5120, 20480, 40, 40, 8, 151851, 8);
  aquila["max_position_embeddings"] = 4096;
  return {
      {"llama3-8b", llama("llama3-8b", 4096, 14336, 32, 32, 8, 128256)},
      {"llama3-70b", llama("llama3-70b", 8192, 28672, 80, 64, 8, 128256)},
      {"mixtral-8x7b", mixtral("mixtral-8x7b", 4096, 14336, 32, 32, 8, 32000, 8)},
      {"mixtral-8x22b", mixtral("mixtral-8x22b", 6144, 16384, 56, 48, 8, 32768, 8)},
      {"qwen-moe-a2.7b", qwen_moe},
      {"aquila-moe-8x16b", aquila},
      {"gpt3-175b", megatron_gpt("gpt3-175b", 12288, 96, 96)},
      // Korthikanti et al. 2022, Table 3.
      {"megatron-22b", megatron_gpt("megatron-22b", 6144, 64, 48)},
      {"megatron-530b", megatron_gpt("megatron-530b", 20480, 128, 105)},
      {"megatron-1t", megatron_gpt("megatron-1t", 25600, 160, 128)},
  };
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, config] : table()) names.push_back(name);
  return names;
}

json preset_config(const std::string& name) {
  const std::string wanted = lower(name);
  for (const auto& [preset, config] : table())
    if (preset == wanted) return config;
  std::string valid;
  for (const auto& n : preset_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw InputError(concat("--preset '", name, "' is not a known model; known presets: ", valid));
}

ModelShape preset_model(const std::string& name) {
  return model_shape_from_json(preset_config(name));
}

}  // namespace metamorph::planner

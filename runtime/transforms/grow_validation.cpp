#include "runtime/transforms/grow_validation.hpp"

#include <cmath>

#include "runtime/core/error.hpp"
#include "runtime/transforms/depth_plan.hpp"

namespace metamorph {

namespace {

void require_not_smaller(const char* field, std::int64_t from, std::int64_t to) {
  require(to >= from, "grow: target ", field, " ", to, " is smaller than the source's ", from,
          "; grow only enlarges a model (", field, " >= ", from, ")");
}

}  // namespace

void validate_growth(const ModelConfig& from, const ModelConfig& to, const GrowOptions& options) {
  require(to.vocab_size == from.vocab_size, "grow: target vocab_size ", to.vocab_size,
          " differs from the source's ", from.vocab_size,
          "; growth keeps the tokenizer, so vocab_size must stay ", from.vocab_size);
  require(to.head_dim == from.head_dim, "grow: target head_dim ", to.head_dim,
          " differs from the source's ", from.head_dim, "; heads grow in number, head_dim stays ",
          from.head_dim);
  require_not_smaller("hidden_size", from.hidden_size, to.hidden_size);
  require_not_smaller("intermediate_size", from.intermediate_size, to.intermediate_size);
  require_not_smaller("num_hidden_layers", from.num_layers, to.num_layers);
  require_not_smaller("num_attention_heads", from.num_heads, to.num_heads);
  require_not_smaller("num_key_value_heads", from.num_kv_heads, to.num_kv_heads);
  const std::int64_t old_group = from.num_heads / from.num_kv_heads;
  const std::int64_t new_group = to.num_heads / to.num_kv_heads;
  require(new_group >= old_group, "grow: target has ", new_group,
          " query heads per KV head (num_attention_heads ", to.num_heads, " / num_key_value_heads ",
          to.num_kv_heads, "), fewer than the source's ", old_group,
          "; a KV group would be split. Grow KV heads together with their query groups, e.g. "
          "num_key_value_heads = ",
          to.num_heads / old_group > 0 ? to.num_heads / old_group : 1, " for ", to.num_heads,
          " query heads");
  require(to.qk_norm == from.qk_norm, "grow: qk_norm differs (source ", from.qk_norm, ", target ",
          to.qk_norm, "); growth cannot add or remove the query/key norms");
  require(!from.attention_bias || to.attention_bias,
          "grow: the source has QKV biases (attention_bias true) but the target does not; set "
          "attention_bias to true in the target config");
  require(from.tie_word_embeddings || !to.tie_word_embeddings,
          "grow: the source has an untied lm_head but the target ties it to the embedding; set "
          "tie_word_embeddings to false (a tied source may grow into an untied target)");
  require(to.rope_theta == from.rope_theta, "grow: target rope_theta ", to.rope_theta,
          " differs from the source's ", from.rope_theta, "; it must stay ", from.rope_theta);
  require(to.rms_norm_eps == from.rms_norm_eps, "grow: target rms_norm_eps ", to.rms_norm_eps,
          " differs from the source's ", from.rms_norm_eps, "; it must stay ", from.rms_norm_eps);
  require(std::isfinite(options.noise) && options.noise >= 0, "grow: noise ", options.noise,
          " must be a finite number >= 0");
  plan_depth(from.num_layers, to.num_layers, options);  // throws on bad positions
}

}  // namespace metamorph

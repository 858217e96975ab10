#include "runtime/transforms/grow.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"
#include "runtime/transforms/depth_plan.hpp"
#include "runtime/transforms/source_checkpoint.hpp"
#include "runtime/transforms/unit_map.hpp"

namespace metamorph {

namespace {

// One dimension of a grown tensor, element by element: which source element it reads, the
// factor it is multiplied by, and whether it belongs to a copy beyond the first.
struct Axis {
  std::vector<std::int64_t> src;
  std::vector<float> scale;
  std::vector<bool> fresh;
  std::int64_t size() const { return static_cast<std::int64_t>(src.size()); }
};

Axis identity_axis(std::int64_t n) {
  Axis axis;
  for (std::int64_t i = 0; i < n; ++i) {
    axis.src.push_back(i);
    axis.scale.push_back(1.0f);
    axis.fresh.push_back(false);
  }
  return axis;
}

// A unit map spread over `block` consecutive elements per unit (head_dim for heads).
Axis unit_axis(const UnitMap& map, std::int64_t block, const std::vector<double>& unit_scale) {
  Axis axis;
  for (std::int64_t u = 0; u < map.size(); ++u) {
    const auto ui = static_cast<std::size_t>(u);
    for (std::int64_t e = 0; e < block; ++e) {
      axis.src.push_back(map.source[ui] * block + e);
      axis.scale.push_back(static_cast<float>(unit_scale[ui]));
      axis.fresh.push_back(map.fresh[ui]);
    }
  }
  return axis;
}

// Where the rows of fresh units (copies beyond the first) of an input-side weight come from.
enum class FreshRows { own_layer, next_layer, random };

class Grower {
 public:
  Grower(Backend& backend, const ModelConfig& from, const ParameterSet& source,
         const ModelConfig& to, const GrowOptions& options)
      : backend_(backend), from_(from), source_(source), to_(to), options_(options) {
    check_whole_source(backend_, from_, source_, "grow");
    const UnitMap hidden = circular_map(from.hidden_size, to.hidden_size);
    std::vector<double> produce, consume, final_norm;
    const double ratio =
        static_cast<double>(to.hidden_size) / static_cast<double>(from.hidden_size);
    for (const std::int64_t c : hidden.copies) {
      // Scaled copies: sum over a unit's copies of alpha^2 is h'/h, so every RMSNorm sees the
      // same mean square; beta = alpha h/h' makes sum(alpha beta) = 1 for every consumer.
      const double alpha = options.hidden_copies == HiddenCopies::scaled
                               ? std::sqrt(ratio / static_cast<double>(c))
                               : 1.0;
      const double beta = options.hidden_copies == HiddenCopies::scaled
                              ? alpha / ratio
                              : 1.0 / static_cast<double>(c);
      produce.push_back(alpha);
      consume.push_back(beta);
      // The final norm only feeds the head: a tied head reads with alpha, so the norm supplies
      // the missing beta / alpha.
      final_norm.push_back(to.tie_word_embeddings ? beta / alpha : 1.0);
    }
    hidden_produce_ = unit_axis(hidden, 1, produce);
    hidden_consume_ = unit_axis(hidden, 1, consume);
    hidden_norm_ = unit_axis(hidden, 1, std::vector<double>(produce.size(), 1.0));
    final_norm_ = unit_axis(hidden, 1, final_norm);

    const UnitMap q =
        grouped_query_map(from.num_heads, from.num_kv_heads, to.num_heads, to.num_kv_heads);
    const UnitMap kv = circular_map(from.num_kv_heads, to.num_kv_heads);
    const UnitMap ffn = circular_map(from.intermediate_size, to.intermediate_size);
    q_rows_ = unit_axis(q, from.head_dim, ones(q));
    kv_rows_ = unit_axis(kv, from.head_dim, ones(kv));
    o_cols_ = unit_axis(q, from.head_dim, consumer_scale(q));
    ffn_rows_ = unit_axis(ffn, 1, ones(ffn));
    down_cols_ = unit_axis(ffn, 1, consumer_scale(ffn));
  }

  ParameterSet run() {
    ParameterSet grown = make_parameters(backend_, to_);
    fill(grown, "model.embed_tokens.weight", "model.embed_tokens.weight",
         identity_axis(to_.vocab_size), hidden_produce_);
    const auto plan = plan_depth(from_.num_layers, to_.num_layers, options_);
    for (std::size_t t = 0; t < plan.size(); ++t)
      grow_layer(grown, static_cast<std::int64_t>(t), plan[t]);
    fill(grown, "model.norm.weight", "model.norm.weight", final_norm_, identity_axis(1));
    if (!to_.tie_word_embeddings) {
      const std::string head =
          from_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
      fill(grown, "lm_head.weight", head, identity_axis(to_.vocab_size), hidden_consume_);
    }
    return grown;
  }

 private:
  static std::vector<double> ones(const UnitMap& map) {
    return std::vector<double>(map.source.size(), 1.0);
  }

  // Input columns a consumer keeps per unit: 1/copies so the copies sum to the old unit, or for
  // `zero` the first copy whole and the fresh (random) units silenced.
  std::vector<double> consumer_scale(const UnitMap& map) const {
    std::vector<double> scale;
    for (std::size_t u = 0; u < map.source.size(); ++u) {
      if (options_.method == GrowMethod::zero)
        scale.push_back(map.fresh[u] ? 0.0 : 1.0);
      else
        scale.push_back(1.0 / static_cast<double>(map.copies[u]));
    }
    return scale;
  }

  const Tensor& source(const std::string& name) const {
    const Parameter* p = source_.find(name);
    MM_ASSERT(p != nullptr, name);
    return p->value;
  }

  // dst[r, c] = src[rows.src[r], cols.src[c]] * rows.scale[r] * cols.scale[c], where fresh rows
  // may read the next layer's tensor or draw random values instead.
  void fill(ParameterSet& grown, const std::string& dst_name, const std::string& own_name,
            const Axis& rows, const Axis& cols, FreshRows fresh_rows = FreshRows::own_layer,
            const std::string& next_name = "") {
    Parameter* dst = grown.find(dst_name);
    MM_ASSERT(dst != nullptr, dst_name);
    MM_ASSERT(dst->value.numel() == rows.size() * cols.size(), dst_name);
    const Tensor& own = source(own_name);
    const float* own_data = own.data<float>();
    const float* next_data = next_name.empty() ? own_data : source(next_name).data<float>();
    const std::int64_t src_cols = own.rank() == 2 ? own.dim(1) : 1;
    const rng::Stream random(options_.seed, "grow.init." + dst_name);
    const float random_std = static_cast<float>(std::max(0.0, init_std(dst_name, to_)));
    float* out = dst->value.data<float>();
    const std::int64_t n_cols = cols.size();
    for (std::int64_t r = 0; r < rows.size(); ++r) {
      const auto ri = static_cast<std::size_t>(r);
      const bool fresh = rows.fresh[ri];
      if (fresh && fresh_rows == FreshRows::random) {
        for (std::int64_t c = 0; c < n_cols; ++c)
          out[r * n_cols + c] =
              random_std * random.normal(static_cast<std::uint64_t>(r * n_cols + c));
        continue;
      }
      const float* base = (fresh && fresh_rows == FreshRows::next_layer ? next_data : own_data) +
                          rows.src[ri] * src_cols;
      for (std::int64_t c = 0; c < n_cols; ++c) {
        const auto ci = static_cast<std::size_t>(c);
        out[r * n_cols + c] = base[cols.src[ci]] * rows.scale[ri] * cols.scale[ci];
      }
    }
    if (options_.noise > 0) add_noise(*dst, own, rows, cols, false);
  }

  // Gaussian noise of std noise * rms(src) on the elements of fresh rows or columns, or on every
  // element (`all`, for copied layers), so that copies can drift apart in training.
  void add_noise(Parameter& dst, const Tensor& src, const Axis& rows, const Axis& cols,
                 bool all) const {
    const double rms = std::sqrt(backend_.sum_squares(src) / static_cast<double>(src.numel()));
    if (rms == 0) return;
    const auto std = static_cast<float>(options_.noise * rms);
    const rng::Stream noise(options_.seed, "grow.noise." + dst.name);
    float* out = dst.value.data<float>();
    const std::int64_t n_cols = cols.size();
    for (std::int64_t r = 0; r < rows.size(); ++r)
      for (std::int64_t c = 0; c < n_cols; ++c)
        if (all || rows.fresh[static_cast<std::size_t>(r)] ||
            cols.fresh[static_cast<std::size_t>(c)])
          out[r * n_cols + c] += std * noise.normal(static_cast<std::uint64_t>(r * n_cols + c));
  }

  void zero(ParameterSet& grown, const std::string& name) {
    Parameter* p = grown.find(name);
    MM_ASSERT(p != nullptr, name);
    backend_.fill(p->value, 0.0f);
  }

  void grow_layer(ParameterSet& grown, std::int64_t target, const GrownLayer& layer) {
    const std::string t = "model.layers." + std::to_string(target) + ".";
    const std::string s = "model.layers." + std::to_string(layer.source) + ".";
    // AKI's "next layer"; the top layer fills its fresh units from itself.
    const std::int64_t next = std::min(layer.source + 1, from_.num_layers - 1);
    const std::string n = "model.layers." + std::to_string(next) + ".";
    const FreshRows fan_in = options_.method == GrowMethod::aki    ? FreshRows::next_layer
                             : options_.method == GrowMethod::zero ? FreshRows::random
                                                                   : FreshRows::own_layer;
    const Axis one = identity_axis(1);
    fill(grown, t + "input_layernorm.weight", s + "input_layernorm.weight", hidden_norm_, one);
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      const Axis& rows = proj[0] == 'q' ? q_rows_ : kv_rows_;
      const std::string w = std::string("self_attn.") + proj + ".weight";
      fill(grown, t + w, s + w, rows, hidden_consume_, fan_in, n + w);
      if (!to_.attention_bias) continue;
      const std::string b = std::string("self_attn.") + proj + ".bias";
      if (from_.attention_bias)
        fill(grown, t + b, s + b, rows, one, fan_in, n + b);
      else
        zero(grown, t + b);  // a bias the source lacked starts at zero: same function
    }
    if (to_.qk_norm) {
      const Axis head = identity_axis(to_.head_dim);
      fill(grown, t + "self_attn.q_norm.weight", s + "self_attn.q_norm.weight", head, one);
      fill(grown, t + "self_attn.k_norm.weight", s + "self_attn.k_norm.weight", head, one);
    }
    fill(grown, t + "self_attn.o_proj.weight", s + "self_attn.o_proj.weight", hidden_produce_,
         o_cols_);
    fill(grown, t + "post_attention_layernorm.weight", s + "post_attention_layernorm.weight",
         hidden_norm_, one);
    fill(grown, t + "mlp.gate_proj.weight", s + "mlp.gate_proj.weight", ffn_rows_, hidden_consume_,
         fan_in, n + "mlp.gate_proj.weight");
    fill(grown, t + "mlp.up_proj.weight", s + "mlp.up_proj.weight", ffn_rows_, hidden_consume_,
         fan_in, n + "mlp.up_proj.weight");
    fill(grown, t + "mlp.down_proj.weight", s + "mlp.down_proj.weight", hidden_produce_,
         down_cols_);
    if (!layer.is_new) return;
    if (options_.depth_init == DepthInit::zero_output) {
      // The block adds nothing to the residual stream: the grown model computes the same function.
      zero(grown, t + "self_attn.o_proj.weight");
      zero(grown, t + "mlp.down_proj.weight");
    } else if (options_.noise > 0) {
      for (const char* w : {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                            "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
        Parameter* p = grown.find(t + w);
        add_noise(*p, source(s + w), identity_axis(p->value.dim(0)), identity_axis(p->value.dim(1)),
                  true);
      }
    }
  }

  Backend& backend_;
  const ModelConfig& from_;
  const ParameterSet& source_;
  const ModelConfig& to_;
  const GrowOptions& options_;
  Axis hidden_produce_, hidden_consume_, hidden_norm_, final_norm_;
  Axis q_rows_, kv_rows_, o_cols_, ffn_rows_, down_cols_;
};

}  // namespace

ParameterSet grow_parameters(Backend& backend, const ModelConfig& from, const ParameterSet& source,
                             const ModelConfig& to, const GrowOptions& options) {
  validate_growth(from, to, options);
  return Grower(backend, from, source, to, options).run();
}

}  // namespace metamorph

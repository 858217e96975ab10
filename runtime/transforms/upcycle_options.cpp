#include "runtime/transforms/upcycle_options.hpp"

#include <vector>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

std::string divisors_of(std::int64_t n) {
  std::string list;
  for (std::int64_t d = 1; d <= n; ++d)
    if (n % d == 0) {
      if (!list.empty()) list += ", ";
      list += std::to_string(d);
    }
  return list;
}

}  // namespace

RouterScoring parse_router_scoring_option(const std::string& name) {
  for (const RouterScoring scoring :
       {RouterScoring::softmax_then_topk, RouterScoring::topk_then_softmax,
        RouterScoring::sigmoid_bias})
    if (router_scoring_name(scoring) == name) return scoring;
  throw InputError(concat("upcycle: router scoring '", name,
                          "' is not one of: softmax_then_topk, topk_then_softmax, sigmoid_bias"));
}

ModelConfig upcycled_config(const ModelConfig& dense, const UpcycleOptions& o) {
  require(!dense.moe.enabled(), "upcycle: the source is already a Mixture-of-Experts model (",
          dense.moe.num_experts, " experts); upcycle needs a dense checkpoint");
  require(o.experts >= 2, "upcycle: --experts must be at least 2, got ", o.experts);
  require(o.top_k >= 1 && o.top_k <= o.experts,
          "upcycle: --top-k must be between 1 and --experts (", o.experts, "), got ", o.top_k);
  require(o.granularity >= 1 && dense.intermediate_size % o.granularity == 0,
          "upcycle: --granularity ", o.granularity, " does not divide the dense intermediate_size ",
          dense.intermediate_size, "; valid: ", divisors_of(dense.intermediate_size));
  require(o.shared_experts >= 0, "upcycle: --shared-experts must be >= 0, got ", o.shared_experts);
  require(o.shared_fraction >= 0 && o.shared_fraction <= 1,
          "upcycle: --shared-fraction must be in [0, 1], got ", o.shared_fraction);
  require(!o.shared_expert_gate || o.shared_experts > 0,
          "upcycle: --shared-expert-gate needs --shared-experts >= 1");
  require(o.router_std >= 0, "upcycle: --router-std must be >= 0, got ", o.router_std);
  require(o.noise >= 0, "upcycle: --noise must be >= 0, got ", o.noise);
  require(o.drop_fraction >= 0 && o.drop_fraction < 1,
          "upcycle: --drop-fraction must be in [0, 1), got ", o.drop_fraction);
  require(o.aux_loss_coef >= 0, "upcycle: --aux-loss-coef must be >= 0, got ", o.aux_loss_coef);
  require(o.z_loss_coef >= 0, "upcycle: --z-loss-coef must be >= 0, got ", o.z_loss_coef);
  require(o.capacity_factor >= 0, "upcycle: --capacity-factor must be >= 0 (0: dropless), got ",
          o.capacity_factor);
  require(o.sparse_step >= 1, "upcycle: --sparse-step must be >= 1, got ", o.sparse_step);
  require(o.first_dense_layers >= 0, "upcycle: --first-dense-layers must be >= 0, got ",
          o.first_dense_layers);

  ModelConfig to = dense;
  // Qwen2-MoE names are metamorph's canonical MoE names (and what export writes for them).
  to.model_type = "qwen2_moe";
  MoeConfig& m = to.moe;
  m.num_experts = o.experts * o.granularity;
  m.top_k = o.top_k * o.granularity;
  m.expert_intermediate_size = dense.intermediate_size / o.granularity;
  m.shared_expert_intermediate_size = o.shared_experts * dense.intermediate_size;
  m.shared_expert_gate = o.shared_expert_gate;
  m.scoring = o.scoring;
  m.norm_topk_prob = o.norm_topk_prob;
  m.aux_loss_coef = o.aux_loss_coef;
  m.z_loss_coef = o.z_loss_coef;
  m.capacity_factor = o.capacity_factor;
  m.sparse_step = o.sparse_step;
  m.first_dense_layers = o.first_dense_layers;
  bool any_moe = false;
  for (std::int64_t l = 0; l < to.num_layers; ++l) any_moe = any_moe || to.is_moe_layer(l);
  require(any_moe, "upcycle: --first-dense-layers ", o.first_dense_layers, " and --sparse-step ",
          o.sparse_step, " leave no MoE layer among the ", to.num_layers, " layers; lower them");
  return to;
}

std::int64_t active_parameter_count(const ModelConfig& config) {
  std::int64_t inactive = 0;
  const MoeConfig& m = config.moe;
  for (std::int64_t l = 0; l < config.num_layers; ++l)
    if (config.is_moe_layer(l))
      inactive += (m.num_experts - m.top_k) * 3 * config.hidden_size * m.expert_intermediate_size;
  return parameter_count(config) - inactive;
}

}  // namespace metamorph

// `metamorph upcycle`: seed a Mixture-of-Experts model from a trained dense checkpoint.
#include <iostream>

#include "launch/cli/command.hpp"
#include "runtime/core/error.hpp"
#include "runtime/log/log.hpp"
#include "runtime/transforms/upcycle_checkpoint.hpp"

namespace metamorph::cli {

namespace {

po::options_description upcycle_options() {
  const UpcycleOptions d;
  po::options_description o;
  // clang-format off
  o.add_options()
    ("from", po::value<std::string>()->required(), "checkpoint of the trained dense model (root or step directory)")
    ("out", po::value<std::string>()->required(), "new checkpoint directory for the MoE model")
    ("experts", po::value<std::int64_t>()->default_value(d.experts), "copies of the dense FFN (experts before --granularity)")
    ("top-k", po::value<std::int64_t>()->default_value(d.top_k), "copies routed per token (before --granularity)")
    ("granularity", po::value<std::int64_t>()->default_value(d.granularity), "fine-grained: cut each copy into G experts of FFN/G; experts and top-k times G")
    ("shared-experts", po::value<std::int64_t>()->default_value(d.shared_experts), "a shared expert N times the dense FFN size (0: none)")
    ("shared-fraction", po::value<double>()->default_value(d.shared_fraction), "share of the dense FFN output the shared expert starts with (routed experts: the rest)")
    ("shared-expert-gate", po::bool_switch(), "Qwen2-MoE sigmoid gate on the shared expert (starts at 1/2)")
    ("scoring", po::value<std::string>()->default_value(router_scoring_name(d.scoring)), "router: softmax_then_topk | topk_then_softmax | sigmoid_bias")
    ("norm-topk-prob", po::value<bool>()->default_value(d.norm_topk_prob), "renormalise the chosen gates to sum to 1 (needed for an exact start)")
    ("router-std", po::value<double>()->default_value(d.router_std), "router weights N(0, std); 0: zero router")
    ("segment-router", po::value<std::string>()->default_value("shared"), "fine-grained: the segments of a copy share its router row (shared: exact start) or not (independent)")
    ("noise", po::value<double>()->default_value(d.noise), "noise on every routed expert weight, relative to its RMS")
    ("drop-fraction", po::value<double>()->default_value(d.drop_fraction), "Drop-Upcycling: fraction of each expert's FFN units re-drawn")
    ("seed", po::value<std::uint64_t>()->default_value(d.seed), "seed of the router, noise and re-drawn units")
    ("aux-loss-coef", po::value<double>()->default_value(d.aux_loss_coef), "load-balancing loss coefficient written into the config")
    ("z-loss-coef", po::value<double>()->default_value(d.z_loss_coef), "router z-loss coefficient written into the config")
    ("capacity-factor", po::value<double>()->default_value(d.capacity_factor), "expert capacity factor (0: dropless)")
    ("first-dense-layers", po::value<std::int64_t>()->default_value(d.first_dense_layers), "the first N layers stay dense")
    ("sparse-step", po::value<std::int64_t>()->default_value(d.sparse_step), "MoE on every N-th layer")
    ("json", po::bool_switch(), "print the summary as one JSON object");
  // clang-format on
  return o;
}

int run_upcycle(const po::variables_map& vm) {
  UpcycleOptions options;
  options.experts = vm["experts"].as<std::int64_t>();
  options.top_k = vm["top-k"].as<std::int64_t>();
  options.granularity = vm["granularity"].as<std::int64_t>();
  options.shared_experts = vm["shared-experts"].as<std::int64_t>();
  options.shared_fraction = vm["shared-fraction"].as<double>();
  options.shared_expert_gate = vm["shared-expert-gate"].as<bool>();
  options.scoring = parse_router_scoring_option(vm["scoring"].as<std::string>());
  options.norm_topk_prob = vm["norm-topk-prob"].as<bool>();
  options.router_std = vm["router-std"].as<double>();
  const std::string segment_router = vm["segment-router"].as<std::string>();
  require(segment_router == "shared" || segment_router == "independent",
          "upcycle: --segment-router '", segment_router, "' is not one of: shared, independent");
  options.independent_segment_routers = segment_router == "independent";
  options.noise = vm["noise"].as<double>();
  options.drop_fraction = vm["drop-fraction"].as<double>();
  options.seed = vm["seed"].as<std::uint64_t>();
  options.aux_loss_coef = vm["aux-loss-coef"].as<double>();
  options.z_loss_coef = vm["z-loss-coef"].as<double>();
  options.capacity_factor = vm["capacity-factor"].as<double>();
  options.first_dense_layers = vm["first-dense-layers"].as<std::int64_t>();
  options.sparse_step = vm["sparse-step"].as<std::int64_t>();
  const UpcycleSummary s =
      upcycle_checkpoint(vm["from"].as<std::string>(), options, vm["out"].as<std::string>());
  if (vm["json"].as<bool>()) {
    std::cout << nlohmann::json({{"saved", s.saved.string()},
                                 {"from_parameters", s.from_parameters},
                                 {"to_parameters", s.to_parameters},
                                 {"active_parameters", s.active_parameters},
                                 {"num_experts", s.to.moe.num_experts},
                                 {"top_k", s.to.moe.top_k},
                                 {"expert_intermediate_size", s.to.moe.expert_intermediate_size},
                                 {"logit_deviation", s.logit_deviation}})
                     .dump()
              << "\n";
  } else {
    const Logger log(0);
    log.info(concat("upcycled ", s.from_parameters, " -> ", s.to_parameters, " parameters (",
                    s.active_parameters, " active; ", s.to.moe.num_experts, " experts of ",
                    s.to.moe.expert_intermediate_size, ", top-", s.to.moe.top_k,
                    "); logit deviation on a probe batch ", s.logit_deviation, "; saved ",
                    s.saved.string()));
  }
  return 0;
}

}  // namespace

Command upcycle_command() {
  return {"upcycle",
          "seed a Mixture-of-Experts model from a trained dense one (expert upcycling)",
          upcycle_options,
          {},
          run_upcycle};
}

}  // namespace metamorph::cli

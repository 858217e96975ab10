// `metamorph grow`: initialise a larger dense model from a smaller trained checkpoint.
#include <iostream>

#include "launch/cli/command.hpp"
#include "runtime/core/error.hpp"
#include "runtime/log/log.hpp"
#include "runtime/transforms/grow_checkpoint.hpp"

namespace metamorph::cli {

namespace {

po::options_description grow_options() {
  po::options_description o;
  // clang-format off
  o.add_options()
    ("from", po::value<std::string>()->required(), "checkpoint of the trained smaller model (root or step directory)")
    ("to", po::value<std::string>()->required(), "config (HF config.json fields) of the larger model")
    ("out", po::value<std::string>()->required(), "new checkpoint directory for the grown model")
    ("method", po::value<std::string>()->default_value("fpi"), "new width units: fpi | aki | zero")
    ("depth", po::value<std::string>()->default_value("interleave"), "where new layers go: interleave | stack")
    ("new-layers", po::value<std::string>(), "explicit target indices of the new layers, e.g. 1,3 (overrides --depth)")
    ("depth-init", po::value<std::string>()->default_value("zero"), "new layers: zero (output projections zero: same function) | copy")
    ("hidden-copies", po::value<std::string>()->default_value("scaled"), "residual copies: scaled (exact for any width) | plain")
    ("noise", po::value<double>()->default_value(0.0), "noise on copies, relative to each tensor's RMS")
    ("seed", po::value<std::uint64_t>()->default_value(1234), "seed of noise and of zero's random weights")
    ("json", po::bool_switch(), "print the summary as one JSON object");
  // clang-format on
  return o;
}

int run_grow(const po::variables_map& vm) {
  GrowOptions options;
  options.method = parse_grow_method(vm["method"].as<std::string>());
  options.placement = parse_depth_placement(vm["depth"].as<std::string>());
  if (vm.count("new-layers"))
    options.new_layer_positions = parse_layer_positions(vm["new-layers"].as<std::string>());
  options.depth_init = parse_depth_init(vm["depth-init"].as<std::string>());
  options.hidden_copies = parse_hidden_copies(vm["hidden-copies"].as<std::string>());
  options.noise = vm["noise"].as<double>();
  options.seed = vm["seed"].as<std::uint64_t>();
  const ModelConfig to = load_model_config(vm["to"].as<std::string>());
  const GrowSummary s =
      grow_checkpoint(vm["from"].as<std::string>(), to, options, vm["out"].as<std::string>());
  if (vm["json"].as<bool>()) {
    std::cout << nlohmann::json({{"saved", s.saved.string()},
                                 {"from_parameters", s.from_parameters},
                                 {"to_parameters", s.to_parameters},
                                 {"logit_deviation", s.logit_deviation}})
                     .dump()
              << "\n";
  } else {
    const Logger log(0);
    log.info(concat("grew ", s.from_parameters, " -> ", s.to_parameters, " parameters (",
                    to_string(options.method), "); logit deviation on a probe batch ",
                    s.logit_deviation, "; saved ", s.saved.string()));
  }
  return 0;
}

}  // namespace

Command grow_command() {
  return {"grow",
          "grow a trained dense model into a larger one (width and depth)",
          grow_options,
          {},
          run_grow};
}

}  // namespace metamorph::cli

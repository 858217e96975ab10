#include "runtime/transforms/depth_plan.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

std::vector<GrownLayer> at_positions(std::int64_t old_layers, std::int64_t new_layers,
                                     const std::vector<std::int64_t>& positions) {
  const std::int64_t added = new_layers - old_layers;
  require(static_cast<std::int64_t>(positions.size()) == added,
          "new layer positions: ", positions.size(), " given, but growing from ", old_layers,
          " to ", new_layers, " layers adds ", added);
  std::vector<bool> is_new(static_cast<std::size_t>(new_layers), false);
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const std::int64_t p = positions[i];
    require(p >= 0 && p < new_layers, "new layer position ", p, " is outside [0, ", new_layers,
            ") (positions are indices into the grown model's layers)");
    require(i == 0 || p > positions[i - 1], "new layer positions must be strictly increasing, got ",
            positions[i - 1], " before ", p);
    is_new[static_cast<std::size_t>(p)] = true;
  }
  std::vector<GrownLayer> plan;
  std::int64_t next_old = 0;
  for (std::int64_t t = 0; t < new_layers; ++t) {
    if (is_new[static_cast<std::size_t>(t)])
      plan.push_back({std::max<std::int64_t>(next_old - 1, 0), true});
    else
      plan.push_back({next_old++, false});
  }
  return plan;
}

}  // namespace

std::vector<GrownLayer> plan_depth(std::int64_t old_layers, std::int64_t new_layers,
                                   const GrowOptions& options) {
  require(new_layers >= old_layers, "num_hidden_layers: cannot shrink from ", old_layers, " to ",
          new_layers, " layers");
  if (!options.new_layer_positions.empty())
    return at_positions(old_layers, new_layers, options.new_layer_positions);
  const std::int64_t added = new_layers - old_layers;
  std::vector<GrownLayer> plan;
  if (options.placement == DepthPlacement::stack) {
    for (std::int64_t l = 0; l < old_layers; ++l) plan.push_back({l, false});
    for (std::int64_t i = 0; i < added; ++i) plan.push_back({i % old_layers, true});
    return plan;
  }
  // Interleave: old layer l is followed by floor((l+1) n / L) - floor(l n / L) new layers,
  // which spreads n new layers evenly for any n (n = L gives L0 L0' L1 L1' ...).
  for (std::int64_t l = 0; l < old_layers; ++l) {
    plan.push_back({l, false});
    const std::int64_t after = (l + 1) * added / old_layers - l * added / old_layers;
    for (std::int64_t i = 0; i < after; ++i) plan.push_back({l, true});
  }
  return plan;
}

}  // namespace metamorph

#pragma once
// Which layer of the smaller model each layer of the grown model is derived from.
#include <cstdint>
#include <vector>

#include "runtime/transforms/grow_options.hpp"

namespace metamorph {

struct GrownLayer {
  std::int64_t source = 0;  // layer of the smaller model whose (widened) weights it starts from
  bool is_new = false;      // inserted by depth growth (zero output or copy, per DepthInit)
};

// One entry per target layer. Old layers keep their order. With explicit positions a new layer
// derives from the nearest old layer below it (or the first old layer when none is below).
// Throws InputError on positions that are out of range, repeated, unsorted or miscounted.
std::vector<GrownLayer> plan_depth(std::int64_t old_layers, std::int64_t new_layers,
                                   const GrowOptions& options);

}  // namespace metamorph

#pragma once
// How `grow` fills a larger dense model from a smaller trained one. The maths is in
// docs/transforms.md, section "Grow".
#include <cstdint>
#include <string>
#include <vector>

namespace metamorph {

// How new width units (attention heads with their KV groups, FFN neurons) get their values. The
// hidden size (the residual stream) always grows by copies, whatever the method: a residual
// dimension that is not a copy would change every RMSNorm's mean square.
enum class GrowMethod {
  fpi,   // bert2BERT function-preserving: copy an old unit, consumers divide by the copy count
  aki,   // advanced knowledge init: a copy's input weights come from the next layer's unit
  zero,  // new units get random input weights and zero output weights (function preserving)
};

// Where new layers go when the depth grows and no explicit positions are given.
enum class DepthPlacement {
  interleave,  // spread evenly: after old layer l come the new layers derived from l
  stack,       // on top: new layer i is derived from old layer i mod L
};

// What a new layer starts as: always a (widened) copy of its source layer, and with zero_output
// its attention-output and FFN-down projections are zero, so the layer is the identity.
enum class DepthInit { zero_output, copy };

// How copies of residual dimensions are scaled when the hidden size grows.
enum class HiddenCopies {
  scaled,  // copies of a dimension copied c times scaled by sqrt(h'/(h c)): exact for any h'
  plain,   // plain copies: exact only when h' is a multiple of h
};

struct GrowOptions {
  GrowMethod method = GrowMethod::fpi;
  DepthPlacement placement = DepthPlacement::interleave;
  // Target indices of the new layers (sorted, distinct); empty means: use `placement`.
  std::vector<std::int64_t> new_layer_positions;
  DepthInit depth_init = DepthInit::zero_output;
  HiddenCopies hidden_copies = HiddenCopies::scaled;
  // Standard deviation of Gaussian noise added to copied units and copied layers, relative to
  // the root mean square of the tensor copied from; 0 keeps copies exact.
  double noise = 0.0;
  std::uint64_t seed = 0;  // for noise and the random input weights of `zero`
};

// Parse the command-line spellings; throw InputError naming the valid ones.
GrowMethod parse_grow_method(const std::string& name);
DepthPlacement parse_depth_placement(const std::string& name);
DepthInit parse_depth_init(const std::string& name);
HiddenCopies parse_hidden_copies(const std::string& name);
// "3,5,7" -> {3, 5, 7}; throws InputError on anything but non-negative integers.
std::vector<std::int64_t> parse_layer_positions(const std::string& list);

std::string to_string(GrowMethod method);
std::string to_string(DepthPlacement placement);
std::string to_string(DepthInit init);
std::string to_string(HiddenCopies copies);

}  // namespace metamorph

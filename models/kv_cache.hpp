#pragma once
// Keys and values a decoder has already computed for one sequence, per layer, so generation runs
// only the new tokens through the model. Keys are stored after RoPE (and QK-norm), exactly as
// attention consumes them.
#include <cstdint>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

struct KvCache {
  std::vector<Tensor> keys;    // per layer [capacity, kv_heads, head_dim]
  std::vector<Tensor> values;  // per layer [capacity, kv_heads, head_dim]
  std::int64_t length = 0;     // committed tokens, positions [0, length) of the key sequence

  std::int64_t capacity() const { return keys.empty() ? 0 : keys.front().dim(0); }
};

}  // namespace metamorph

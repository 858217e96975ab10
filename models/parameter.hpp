#pragma once
// A model parameter as every subsystem sees it: a canonical global name (Hugging Face naming,
// e.g. "model.layers.3.self_attn.q_proj.weight", PyTorch [out, in] layout), the global shape,
// and the shard this rank holds (its offset in every global dimension). Checkpoints, resharding,
// HF import/export and the optimizer all work from this one description.
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

struct Parameter {
  std::string name;
  Shape global_shape;
  Shape offset;           // where value's block starts in the global tensor (same rank)
  Tensor value;           // fp32 master weights, local shard shape
  Tensor grad;            // same shape as value
  Tensor adam_m, adam_v;  // AdamW moments; undefined until the optimizer creates them
  // ZeRO-1 shards the optimizer state differently from the weights: adam_m/adam_v (and master)
  // cover the block of adam_m's shape starting here. Empty means the same block as `offset`.
  Shape optim_offset;
  // fp32 master of the optimizer block when `value` is not itself fp32 (bf16 weights on GPU);
  // undefined when `value` is the fp32 master (CPU).
  Tensor master;
  bool weight_decay = true;  // false for norms and biases
  // false for state a rule updates instead of the optimizer (the router's balancing bias): no
  // AdamW update, not in the gradient norm; still saved and loaded with the model.
  bool trainable = true;

  Shape local_shape() const { return value.shape(); }
  // ZeRO-1 with a separate master (bf16 weights): the master holds only the optimizer block's
  // rows, and the other rows of `value` are rounded copies of other replicas' masters.
  bool master_holds_rows_only() const { return master.defined() && !optim_offset.empty(); }
  // The rows of a tensor shaped like `value` that the fp32 master covers.
  Tensor master_rows(const Tensor& whole) const {
    if (!master_holds_rows_only()) return whole;
    const std::int64_t begin = optim_offset[0] - offset[0];
    return whole.slice(begin, begin + master.dim(0));
  }
  bool is_sharded() const { return value.shape() != global_shape; }
};

// Parameters in a fixed, deterministic order (the model's construction order). A deque, so
// references returned by add() stay valid as the set grows.
class ParameterSet {
 public:
  Parameter& add(Parameter p) {
    params_.push_back(std::move(p));
    return params_.back();
  }
  std::deque<Parameter>& all() { return params_; }
  const std::deque<Parameter>& all() const { return params_; }
  Parameter* find(const std::string& name) {
    for (auto& p : params_)
      if (p.name == name) return &p;
    return nullptr;
  }
  const Parameter* find(const std::string& name) const {
    for (const auto& p : params_)
      if (p.name == name) return &p;
    return nullptr;
  }
  std::size_t size() const { return params_.size(); }
  // One buffer holding every gradient back to back (each Parameter::grad is a slice of it), for
  // flat data-parallel buckets; undefined when the grads were allocated one by one.
  Tensor flat_grads;

 private:
  std::deque<Parameter> params_;
};

}  // namespace metamorph

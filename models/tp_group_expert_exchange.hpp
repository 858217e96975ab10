#pragma once
// Expert parallelism across a tensor-parallel group (--tp T --etp 1 --ep T, Megatron-Core's
// usual MoE layout). Every rank of a TP group routes the same tokens to the same experts, so no
// rows need to move: rank r holds whole experts [r * E/T, (r + 1) * E/T) and, since the block
// sorts its routed rows by global expert, their rows are one contiguous segment of the rows.
//
//   dispatch: that segment;
//   combine:  the segment's outputs back in place, zero rows for the other ranks' experts.
//
// The block's output is then this rank's partial sum, as under expert-TP = TP, and the
// decoder layer's TP all-reduce adds the ranks' parts; the backward mirrors it (dispatch takes
// the segment of the output gradient, combine pads the input gradient with zeros, which the
// layer's all-reduce of dx sums). The gate gradients dy . expert_out are partial too, so the
// router's weight gradient is summed over TP once a step (tp_partial_gradient), exactly as for
// expert-TP = TP. Capacity is one rank's view: the group's tokens are this rank's tokens.
// MoeBlock takes the shortcut `local_segment` offers: it gathers the segment's rows itself and
// combines the segment alone (moe_combine's row window), which gives the bits of combine's
// zero-padded rows without their copy; dispatch and combine state the exchange's meaning for
// callers of the general interface.
#include <cstdint>
#include <vector>

#include "models/expert_exchange.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

class TpGroupExpertExchange final : public ExpertExchange {
 public:
  // Rank `rank` of a TP group of `size` ranks; size must divide num_experts.
  TpGroupExpertExchange(std::int64_t num_experts, int rank, int size, Backend& backend);

  std::int64_t first_local_expert() const override { return first_; }
  std::int64_t num_local_experts() const override { return local_; }
  // No collective: the counts are the same on every rank of the group.
  ExchangePlan plan(const std::vector<std::int64_t>& send_counts) override;
  // rows [sum send_counts, h] -> this rank's segment [sum local_counts, h].
  Tensor dispatch(const ExchangePlan& plan, const Tensor& rows) override;
  // [sum local_counts, h] -> [sum send_counts, h], zero outside the segment.
  Tensor combine(const ExchangePlan& plan, const Tensor& rows) override;
  // The group's tokens are this rank's: the single-rank view (nothing before, own tokens).
  bool provides_capacity_counts() const override { return true; }
  // This rank's experts' rows.
  std::optional<RowSegment> local_segment(const ExchangePlan& plan) const override;

 private:
  std::int64_t num_experts_, first_, local_;
  Backend& backend_;
};

}  // namespace metamorph

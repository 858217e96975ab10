#pragma once
// Expert parallelism's token exchange over the EP communicator. Rank r of an EP group of p
// ranks holds global experts [r * E/p, (r + 1) * E/p) of every MoE layer.
//
//   plan:     each rank tells every peer how many rows it routes to each of the peer's experts
//             (one all-to-all of p x E/p integers);
//   dispatch: all-to-all-v of the rows (sorted by global expert, hence by destination rank);
//             a rank receives them grouped [source rank][local expert] and regroups them to
//             [local expert][source rank], the order the expert GEMMs want;
//   combine:  the exact inverse (regroup back, all-to-all-v the other way).
// Both directions are permutations plus communication, so a block's backward reuses them with
// roles swapped (the gradient of dispatch is combine and vice versa) and the plan of the
// forward: no second count exchange.
//
// With an expert-TP group whose members hold different tokens (expert-TP across data-parallel
// replicas, tp 1), each expert is split over that group: dispatch then also gathers the rows
// the members received (so every shard sees all of the group's rows, ordered [local expert]
// [member][source rank]) and combine sums the members' partial outputs and gives each member
// back its own rows (a reduce-scatter). The two stay each other's adjoints.
//
// Rows live where the backend computes: they are allocated, regrouped (row-block copies) and
// summed through the Backend, so on the GPU they stay in device memory and travel over the EP
// communicator's NCCL all-to-all-v (grouped ncclSend/ncclRecv). The row counts are host data
// (the router's summary is downloaded by router_forward) and go over the group's MPI side.
#include <cstdint>
#include <vector>

#include "models/expert_exchange.hpp"
#include "parallel/communicator.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

class EpExpertExchange final : public ExpertExchange {
 public:
  // `ep` is this rank's EP group; num_experts must divide by its size. Rows are allocated and
  // moved by `backend` (counts in its host memory). expert_tp: the expert-TP group to gather
  // over (null: none).
  EpExpertExchange(Communicator& ep, std::int64_t num_experts, Backend& backend,
                   Communicator* expert_tp = nullptr);

  std::int64_t first_local_expert() const override { return first_; }
  std::int64_t num_local_experts() const override { return local_; }
  ExchangePlan plan(const std::vector<std::int64_t>& send_counts) override;
  Tensor dispatch(const ExchangePlan& plan, const Tensor& rows) override;
  Tensor combine(const ExchangePlan& plan, const Tensor& rows) override;
  PendingRows start_combine(const ExchangePlan& plan, const Tensor& rows) override;
  // On a device backend: NCCL runs the all-to-all-v on its own stream.
  bool combines_in_background() const override { return backend_.device() != Device::cpu; }
  // Capacity over the EP group: an all-gather of every rank's per-expert counts and tokens.
  // Not with an expert-TP gather (an expert's rows then come from several EP groups).
  bool provides_capacity_counts() const override { return etp_ == nullptr; }
  CapacityCounts capacity_counts(const std::vector<std::int64_t>& counts,
                                 std::int64_t tokens) override;

 private:
  // Rows per peer rank: sums of per-expert counts in blocks of local_.
  std::vector<std::int64_t> per_rank(const std::vector<std::int64_t>& per_expert) const;
  // Reorders rows grouped [a][b] (counts[a * nb + b]) into [b][a].
  Tensor transpose_groups(const Tensor& rows, const std::vector<std::int64_t>& counts,
                          std::int64_t na, std::int64_t nb) const;

  // The expert-TP gather of dispatch and the reduce-scatter of combine.
  Tensor gather_group(const ExchangePlan& plan, const Tensor& rows);
  Tensor reduce_group(const ExchangePlan& plan, const Tensor& rows);

  // An i64 host tensor holding `values` (counts travel over the group's host side).
  Tensor host_counts(const std::vector<std::int64_t>& values, std::int64_t size);

  Communicator& ep_;
  Communicator* etp_;  // null or size 1: no expert-TP gather
  Backend& backend_;
  std::int64_t num_experts_;
  std::int64_t local_;
  std::int64_t first_;
};

}  // namespace metamorph

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
#include <cstdint>
#include <vector>

#include "models/expert_exchange.hpp"
#include "parallel/communicator.hpp"

namespace metamorph {

class EpExpertExchange final : public ExpertExchange {
 public:
  // `ep` is this rank's EP group; num_experts must divide by its size. Result rows are
  // allocated from `arena`. expert_tp: the expert-TP group to gather over (null: none).
  EpExpertExchange(Communicator& ep, std::int64_t num_experts, Arena& arena,
                   Communicator* expert_tp = nullptr);

  std::int64_t first_local_expert() const override { return first_; }
  std::int64_t num_local_experts() const override { return local_; }
  ExchangePlan plan(const std::vector<std::int64_t>& send_counts) override;
  Tensor dispatch(const ExchangePlan& plan, const Tensor& rows) override;
  Tensor combine(const ExchangePlan& plan, const Tensor& rows) override;

 private:
  // Rows per peer rank: sums of per-expert counts in blocks of local_.
  std::vector<std::int64_t> per_rank(const std::vector<std::int64_t>& per_expert) const;
  // Reorders rows grouped [a][b] (counts[a * nb + b]) into [b][a].
  Tensor transpose_groups(const Tensor& rows, const std::vector<std::int64_t>& counts,
                          std::int64_t na, std::int64_t nb) const;

  // The expert-TP gather of dispatch and the reduce-scatter of combine.
  Tensor gather_group(const ExchangePlan& plan, const Tensor& rows);
  Tensor reduce_group(const ExchangePlan& plan, const Tensor& rows);

  Communicator& ep_;
  Communicator* etp_;  // null or size 1: no expert-TP gather
  Arena& arena_;
  std::int64_t num_experts_;
  std::int64_t local_;
  std::int64_t first_;
};

}  // namespace metamorph

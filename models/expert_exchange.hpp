#pragma once
// How an MoE block reaches experts it does not hold. The block sorts its routed (token, expert)
// rows by global expert id; an ExpertExchange moves them to the ranks of the expert-parallel
// group that hold those experts and brings the results back. Both directions are linear
// permutations plus communication, so the backward pass uses the same two calls with roles
// swapped: the gradient of dispatch is combine and vice versa.
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

// What a capacity-limited MoE block needs to know of the other ranks of its expert-parallel
// group: capacity is ceil(cf * group tokens * k / E) per expert, and an expert keeps the first
// rows in (rank, token) order, so each rank must know how many rows the ranks before it route
// to every expert.
struct CapacityCounts {
  std::vector<std::int64_t> rows_before;  // [E] rows the EP ranks before this one route to e
  std::int64_t tokens = 0;                // tokens over the whole EP group
};

// What one dispatch agreed on with the peers; kept by the block until its backward.
struct ExchangePlan {
  std::vector<std::int64_t> send_counts;   // [E] rows this rank routes to each global expert
  std::vector<std::int64_t> local_counts;  // [local experts] rows this rank's experts receive
  std::vector<std::int64_t> peer_counts;   // [ep * local experts] rows per (source rank, expert)
  // Under expert tensor parallelism across replicas: [etp * local experts] rows each member of
  // the expert-TP group received per local expert (empty otherwise).
  std::vector<std::int64_t> group_counts = {};
};

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  // The global experts this rank holds: [first_local_expert, + num_local_experts).
  virtual std::int64_t first_local_expert() const = 0;
  virtual std::int64_t num_local_experts() const = 0;
  // Agrees with the peers on the row counts (collective over the EP group).
  virtual ExchangePlan plan(const std::vector<std::int64_t>& send_counts) = 0;
  // rows [sum send_counts, h], sorted by global expert -> [sum local_counts, h], sorted by local
  // expert (rows of one expert from several ranks in source-rank order).
  virtual Tensor dispatch(const ExchangePlan& plan, const Tensor& rows) = 0;
  // The inverse of dispatch: [sum local_counts, h] -> [sum send_counts, h].
  virtual Tensor combine(const ExchangePlan& plan, const Tensor& rows) = 0;

  // combine, started: `finish` returns its rows. An exchange whose transfer runs beside the
  // compute (NCCL on its own stream) says so through combines_in_background, so a block can
  // queue work that does not need the rows (the shared expert) before finishing; otherwise the
  // rows have arrived before start_combine returns.
  struct PendingRows {
    std::function<Tensor()> finish;
  };
  virtual PendingRows start_combine(const ExchangePlan& plan, const Tensor& rows) {
    Tensor out = combine(plan, rows);
    return {[out = std::move(out)] { return out; }};
  }
  virtual bool combines_in_background() const { return false; }

  // Rows [begin, begin + count) of the expert-sorted rows.
  struct RowSegment {
    std::int64_t begin = 0;
    std::int64_t count = 0;
  };
  // An exchange that moves no rows, whose dispatch is this segment of the rows and whose combine
  // puts rows back there (zero elsewhere), says so: the block then gathers the segment's rows
  // straight from the tokens instead of gathering every row for dispatch to cut out.
  virtual std::optional<RowSegment> local_segment(const ExchangePlan&) const {
    return std::nullopt;
  }

  // Capacity under expert parallelism. An exchange that spans several ranks returns true from
  // provides_capacity_counts and implements capacity_counts as a collective over the EP group
  // (exclusive prefix sum of `counts` over the ranks, sum of `tokens`); MoeBlock refuses a
  // capacity factor on an exchange with remote experts that does not. The defaults are one
  // rank's view: nothing before it, its own tokens.
  virtual bool provides_capacity_counts() const { return false; }
  virtual CapacityCounts capacity_counts(const std::vector<std::int64_t>& counts,
                                         std::int64_t tokens) {
    return {std::vector<std::int64_t>(counts.size(), 0), tokens};
  }
};

// Every expert on this rank (no expert parallelism): both directions are the identity.
class LocalExpertExchange final : public ExpertExchange {
 public:
  explicit LocalExpertExchange(std::int64_t num_experts) : num_experts_(num_experts) {}
  std::int64_t first_local_expert() const override { return 0; }
  std::int64_t num_local_experts() const override { return num_experts_; }
  ExchangePlan plan(const std::vector<std::int64_t>& send_counts) override {
    return {send_counts, send_counts, send_counts};
  }
  Tensor dispatch(const ExchangePlan&, const Tensor& rows) override { return rows; }
  Tensor combine(const ExchangePlan&, const Tensor& rows) override { return rows; }

 private:
  std::int64_t num_experts_;
};

}  // namespace metamorph

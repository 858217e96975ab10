#include "models/tp_group_expert_exchange.hpp"

#include <numeric>

#include "runtime/core/error.hpp"

namespace metamorph {

TpGroupExpertExchange::TpGroupExpertExchange(std::int64_t num_experts, int rank, int size,
                                             Backend& backend)
    : num_experts_(num_experts), backend_(backend) {
  require(size >= 1 && num_experts > 0 && num_experts % size == 0, "expert parallelism over ", size,
          " tensor-parallel ranks needs a number of experts that divides by ", size, ", got ",
          num_experts);
  MM_ASSERT(rank >= 0 && rank < size, "TP rank ", rank, " of ", size);
  local_ = num_experts / size;
  first_ = local_ * rank;
}

ExchangePlan TpGroupExpertExchange::plan(const std::vector<std::int64_t>& send_counts) {
  MM_ASSERT(static_cast<std::int64_t>(send_counts.size()) == num_experts_, "plan for ",
            send_counts.size(), " of ", num_experts_, " experts");
  ExchangePlan plan;
  plan.send_counts = send_counts;
  plan.local_counts.assign(send_counts.begin() + first_, send_counts.begin() + first_ + local_);
  plan.peer_counts = plan.local_counts;  // the rows come from this rank alone
  return plan;
}

std::optional<ExpertExchange::RowSegment> TpGroupExpertExchange::local_segment(
    const ExchangePlan& plan) const {
  RowSegment segment;
  segment.begin =
      std::accumulate(plan.send_counts.begin(), plan.send_counts.begin() + first_, std::int64_t{0});
  segment.count =
      std::accumulate(plan.local_counts.begin(), plan.local_counts.end(), std::int64_t{0});
  return segment;
}

Tensor TpGroupExpertExchange::dispatch(const ExchangePlan& plan, const Tensor& rows) {
  const auto [begin, n] = *local_segment(plan);
  MM_ASSERT(begin + n <= rows.dim(0), "dispatch: segment [", begin, ", ", begin + n, ") of ",
            rows.dim(0), " rows");
  // A copy, not a view: the block keeps its expert input until the backward, and a view would
  // keep every rank's rows alive with it.
  Shape shape = rows.shape();
  shape[0] = n;
  Tensor out = backend_.empty(shape, rows.dtype());
  if (n > 0) backend_.copy(rows.slice(begin, begin + n), out);
  return out;
}

Tensor TpGroupExpertExchange::combine(const ExchangePlan& plan, const Tensor& rows) {
  const std::int64_t total =
      std::accumulate(plan.send_counts.begin(), plan.send_counts.end(), std::int64_t{0});
  const std::int64_t begin = local_segment(plan)->begin, n = rows.dim(0);
  Shape shape = rows.shape();
  shape[0] = total;
  // The other ranks' experts contribute nothing to this rank's partial sum.
  Tensor out = backend_.zeros(shape, rows.dtype());
  if (n > 0) {
    Tensor segment = out.slice(begin, begin + n);
    backend_.copy(rows, segment);
  }
  return out;
}

}  // namespace metamorph

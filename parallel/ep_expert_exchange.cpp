#include "parallel/ep_expert_exchange.hpp"

#include <algorithm>
#include <memory>

#include "runtime/core/error.hpp"

namespace metamorph {

EpExpertExchange::EpExpertExchange(Communicator& ep, std::int64_t num_experts, Backend& backend,
                                   Communicator* expert_tp)
    : ep_(ep),
      etp_(expert_tp != nullptr && expert_tp->size() > 1 ? expert_tp : nullptr),
      backend_(backend),
      num_experts_(num_experts) {
  require(num_experts > 0 && num_experts % ep.size() == 0, "expert parallelism: ", ep.size(),
          " EP ranks do not divide the number of experts ", num_experts);
  local_ = num_experts / ep.size();
  first_ = local_ * ep.rank();
}

Tensor EpExpertExchange::host_counts(const std::vector<std::int64_t>& values, std::int64_t size) {
  MM_ASSERT(static_cast<std::int64_t>(values.size()) <= size, values.size(), " counts for ", size);
  Tensor t = backend_.host_empty({size}, DType::i64);
  std::copy(values.begin(), values.end(), t.data<std::int64_t>());
  return t;
}

std::vector<std::int64_t> EpExpertExchange::per_rank(
    const std::vector<std::int64_t>& per_expert) const {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(ep_.size()), 0);
  for (std::size_t e = 0; e < per_expert.size(); ++e)
    rows[e / static_cast<std::size_t>(local_)] += per_expert[e];
  return rows;
}

ExchangePlan EpExpertExchange::plan(const std::vector<std::int64_t>& send_counts) {
  MM_ASSERT(static_cast<std::int64_t>(send_counts.size()) == num_experts_,
            "plan: ", send_counts.size(), " counts for ", num_experts_, " experts");
  for (std::int64_t c : send_counts) MM_ASSERT(c >= 0, "plan: negative row count ", c);
  // Global expert order is destination-rank order, each peer's experts in local order: the
  // send counts already are p blocks of local_ counts, one per peer.
  Tensor out = backend_.host_empty({num_experts_}, DType::i64);
  Tensor in = host_counts(send_counts, num_experts_);
  ep_.all_to_all(in, out);
  ExchangePlan plan;
  plan.send_counts = send_counts;
  const auto* received = out.data<std::int64_t>();
  plan.peer_counts.assign(received, received + num_experts_);
  plan.local_counts.assign(static_cast<std::size_t>(local_), 0);
  for (std::int64_t i = 0; i < num_experts_; ++i)
    plan.local_counts[static_cast<std::size_t>(i % local_)] += received[i];
  if (etp_ != nullptr) {
    // Every member of the expert-TP group learns what the others received per local expert.
    Tensor mine = host_counts(plan.local_counts, local_);
    Tensor all = backend_.host_empty({local_ * etp_->size()}, DType::i64);
    etp_->all_gather(mine, all);
    plan.group_counts.assign(all.data<std::int64_t>(), all.data<std::int64_t>() + all.numel());
    std::fill(plan.local_counts.begin(), plan.local_counts.end(), 0);
    for (std::size_t i = 0; i < plan.group_counts.size(); ++i)
      plan.local_counts[i % static_cast<std::size_t>(local_)] += plan.group_counts[i];
  }
  return plan;
}

Tensor EpExpertExchange::gather_group(const ExchangePlan& plan, const Tensor& rows) {
  const int t = etp_->size();
  const auto l = static_cast<std::size_t>(local_);
  std::vector<std::int64_t> send_rows(static_cast<std::size_t>(t), rows.dim(0)), recv_rows;
  std::int64_t total = 0;
  for (int m = 0; m < t; ++m) {
    std::int64_t n = 0;
    for (std::size_t e = 0; e < l; ++e) n += plan.group_counts[static_cast<std::size_t>(m) * l + e];
    recv_rows.push_back(n);
    total += n;
  }
  // The same rows to every member (an all-gather of unequal parts).
  Shape shape = rows.shape();
  shape[0] = rows.dim(0) * t;
  Tensor copies = backend_.empty(shape, rows.dtype());
  const std::int64_t n = rows.dim(0);
  for (std::int64_t m = 0; m < t && n > 0; ++m) {
    Tensor copy = copies.slice(m * n, (m + 1) * n);
    backend_.copy(rows, copy);
  }
  shape[0] = total;
  Tensor by_member = backend_.empty(shape, rows.dtype());
  etp_->all_to_all_v(copies, send_rows, by_member, recv_rows);
  // [member][local expert] -> [local expert][member]
  return transpose_groups(by_member, plan.group_counts, t, local_);
}

Tensor EpExpertExchange::reduce_group(const ExchangePlan& plan, const Tensor& rows) {
  MM_ASSERT(rows.dtype() == DType::f32 || rows.dtype() == DType::bf16,
            "expert-TP combine sums floating-point rows, got ", dtype_name(rows.dtype()));
  const int t = etp_->size(), me = etp_->rank();
  const auto l = static_cast<std::size_t>(local_), tu = static_cast<std::size_t>(t);
  std::vector<std::int64_t> by_expert(plan.group_counts.size());
  for (std::size_t m = 0; m < tu; ++m)
    for (std::size_t e = 0; e < l; ++e) by_expert[e * tu + m] = plan.group_counts[m * l + e];
  const Tensor by_member = transpose_groups(rows, by_expert, local_, t);
  std::vector<std::int64_t> send_rows;
  std::int64_t mine = 0;
  for (std::size_t m = 0; m < tu; ++m) {
    std::int64_t n = 0;
    for (std::size_t e = 0; e < l; ++e) n += plan.group_counts[m * l + e];
    send_rows.push_back(n);
    if (static_cast<int>(m) == me) mine = n;
  }
  const std::vector<std::int64_t> recv_rows(tu, mine);
  Shape shape = rows.shape();
  shape[0] = mine * t;
  Tensor partials = backend_.empty(shape, rows.dtype());
  etp_->all_to_all_v(by_member, send_rows, partials, recv_rows);
  // The members' partial sums of this rank's rows, added in member order.
  shape[0] = mine;
  Tensor out = backend_.zeros(shape, rows.dtype());
  for (std::int64_t m = 0; m < t && mine > 0; ++m)
    backend_.axpy(1.0f, partials.slice(m * mine, (m + 1) * mine), out);
  return out;
}

Tensor EpExpertExchange::transpose_groups(const Tensor& rows,
                                          const std::vector<std::int64_t>& counts, std::int64_t na,
                                          std::int64_t nb) const {
  Tensor out = backend_.empty(rows.shape(), rows.dtype());
  // Start of group (a, b) in the input; the output walks b-major.
  std::vector<std::int64_t> start(counts.size(), 0);
  std::int64_t at = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    start[i] = at;
    at += counts[i];
  }
  MM_ASSERT(at == rows.dim(0), "exchange: ", rows.dim(0), " rows, the plan says ", at);
  // One row-block copy per non-empty group (device copies on the GPU).
  for (std::int64_t b = 0, written = 0; b < nb; ++b)
    for (std::int64_t a = 0; a < na; ++a) {
      const auto i = static_cast<std::size_t>(a * nb + b);
      if (counts[i] > 0) {
        Tensor block = out.slice(written, written + counts[i]);
        backend_.copy(rows.slice(start[i], start[i] + counts[i]), block);
      }
      written += counts[i];
    }
  return out;
}

Tensor EpExpertExchange::dispatch(const ExchangePlan& plan, const Tensor& rows) {
  const std::vector<std::int64_t> send_rows = per_rank(plan.send_counts);
  const std::vector<std::int64_t> recv_rows = per_rank(plan.peer_counts);
  std::int64_t received = 0;
  for (std::int64_t r : recv_rows) received += r;
  Shape shape = rows.shape();
  shape[0] = received;
  Tensor by_source = backend_.empty(shape, rows.dtype());
  ep_.all_to_all_v(rows, send_rows, by_source, recv_rows);
  // [source rank][local expert] -> [local expert][source rank]
  Tensor by_expert = transpose_groups(by_source, plan.peer_counts, ep_.size(), local_);
  return etp_ != nullptr ? gather_group(plan, by_expert) : by_expert;
}

Tensor EpExpertExchange::combine(const ExchangePlan& plan, const Tensor& gathered) {
  return start_combine(plan, gathered).finish();
}

ExpertExchange::PendingRows EpExpertExchange::start_combine(const ExchangePlan& plan,
                                                            const Tensor& gathered) {
  const Tensor rows = etp_ != nullptr ? reduce_group(plan, gathered) : gathered;
  // peer_counts indexed [local expert][source rank] for the inverse regrouping.
  std::vector<std::int64_t> by_expert(plan.peer_counts.size());
  const auto p = static_cast<std::size_t>(ep_.size()), l = static_cast<std::size_t>(local_);
  for (std::size_t j = 0; j < p; ++j)
    for (std::size_t e = 0; e < l; ++e) by_expert[e * p + j] = plan.peer_counts[j * l + e];
  const Tensor by_source = transpose_groups(rows, by_expert, local_, ep_.size());
  const std::vector<std::int64_t> send_rows = per_rank(plan.peer_counts);
  const std::vector<std::int64_t> recv_rows = per_rank(plan.send_counts);
  std::int64_t back = 0;
  for (std::int64_t r : recv_rows) back += r;
  Shape shape = rows.shape();
  shape[0] = back;
  Tensor out = backend_.empty(shape, rows.dtype());
  // The request keeps by_source and out alive until it completes.
  std::shared_ptr<CommRequest> moving =
      ep_.start_all_to_all_v(by_source, send_rows, out, recv_rows);
  return {[moving = std::move(moving), out = std::move(out)] {
    moving->wait();
    return out;
  }};
}

CapacityCounts EpExpertExchange::capacity_counts(const std::vector<std::int64_t>& counts,
                                                 std::int64_t tokens) {
  MM_ASSERT(static_cast<std::int64_t>(counts.size()) == num_experts_, "capacity counts for ",
            counts.size(), " of ", num_experts_, " experts");
  const auto e = static_cast<std::size_t>(num_experts_);
  Tensor mine = host_counts(counts, num_experts_ + 1);
  mine.data<std::int64_t>()[num_experts_] = tokens;
  Tensor all = backend_.host_empty({(num_experts_ + 1) * ep_.size()}, DType::i64);
  ep_.all_gather(mine, all);
  CapacityCounts out;
  out.rows_before.assign(e, 0);
  const auto* a = all.data<std::int64_t>();
  for (int r = 0; r < ep_.size(); ++r) {
    const std::int64_t* row = a + static_cast<std::int64_t>(r) * (num_experts_ + 1);
    if (r < ep_.rank())
      for (std::size_t i = 0; i < e; ++i) out.rows_before[i] += row[i];
    out.tokens += row[num_experts_];
  }
  return out;
}

}  // namespace metamorph

#include "parallel/ep_expert_exchange.hpp"

#include <algorithm>
#include <cstring>

#include "runtime/core/error.hpp"

namespace metamorph {

EpExpertExchange::EpExpertExchange(Communicator& ep, std::int64_t num_experts, Arena& arena,
                                   Communicator* expert_tp)
    : ep_(ep),
      etp_(expert_tp != nullptr && expert_tp->size() > 1 ? expert_tp : nullptr),
      arena_(arena),
      num_experts_(num_experts) {
  require(num_experts > 0 && num_experts % ep.size() == 0, "expert parallelism: ", ep.size(),
          " EP ranks do not divide the number of experts ", num_experts);
  local_ = num_experts / ep.size();
  first_ = local_ * ep.rank();
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
  Tensor out = Tensor::empty({num_experts_}, DType::i64, arena_);
  Tensor in = Tensor::empty({num_experts_}, DType::i64, arena_);
  std::memcpy(in.data<std::int64_t>(), send_counts.data(), in.bytes());
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
    Tensor mine = Tensor::empty({local_}, DType::i64, arena_);
    std::memcpy(mine.data<std::int64_t>(), plan.local_counts.data(), mine.bytes());
    Tensor all = Tensor::empty({local_ * etp_->size()}, DType::i64, arena_);
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
  Tensor copies = Tensor::empty(shape, rows.dtype(), arena_);
  for (int m = 0; m < t; ++m)
    if (rows.bytes() > 0)
      std::memcpy(static_cast<char*>(copies.raw()) + static_cast<std::size_t>(m) * rows.bytes(),
                  rows.raw(), rows.bytes());
  shape[0] = total;
  Tensor by_member = Tensor::empty(shape, rows.dtype(), arena_);
  etp_->all_to_all_v(copies, send_rows, by_member, recv_rows);
  // [member][local expert] -> [local expert][member]
  return transpose_groups(by_member, plan.group_counts, t, local_);
}

Tensor EpExpertExchange::reduce_group(const ExchangePlan& plan, const Tensor& rows) {
  MM_ASSERT(rows.dtype() == DType::f32, "expert-TP combine sums f32 rows");
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
  Tensor partials = Tensor::empty(shape, rows.dtype(), arena_);
  etp_->all_to_all_v(by_member, send_rows, partials, recv_rows);
  // The members' partial sums of this rank's rows, added in member order.
  shape[0] = mine;
  Tensor out = Tensor::zeros(shape, rows.dtype(), arena_);
  const std::int64_t n = out.numel();
  float* o = out.data<float>();
  const float* in = partials.data<float>();
  for (int m = 0; m < t; ++m)
    for (std::int64_t i = 0; i < n; ++i) o[i] += in[m * n + i];
  return out;
}

Tensor EpExpertExchange::transpose_groups(const Tensor& rows,
                                          const std::vector<std::int64_t>& counts, std::int64_t na,
                                          std::int64_t nb) const {
  const std::size_t row_bytes =
      rows.dim(0) == 0 ? 0 : rows.bytes() / static_cast<std::size_t>(rows.dim(0));
  Tensor out = Tensor::empty(rows.shape(), rows.dtype(), arena_);
  // Start of group (a, b) in the input; the output walks b-major.
  std::vector<std::int64_t> start(counts.size(), 0);
  std::int64_t at = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    start[i] = at;
    at += counts[i];
  }
  MM_ASSERT(at == rows.dim(0), "exchange: ", rows.dim(0), " rows, the plan says ", at);
  const auto* src = static_cast<const char*>(rows.raw());
  auto* dst = static_cast<char*>(out.raw());
  for (std::int64_t b = 0, written = 0; b < nb; ++b)
    for (std::int64_t a = 0; a < na; ++a) {
      const auto i = static_cast<std::size_t>(a * nb + b);
      const auto bytes = static_cast<std::size_t>(counts[i]) * row_bytes;
      if (bytes > 0)
        std::memcpy(dst + static_cast<std::size_t>(written) * row_bytes,
                    src + static_cast<std::size_t>(start[i]) * row_bytes, bytes);
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
  Tensor by_source = Tensor::empty(shape, rows.dtype(), arena_);
  ep_.all_to_all_v(rows, send_rows, by_source, recv_rows);
  // [source rank][local expert] -> [local expert][source rank]
  Tensor by_expert = transpose_groups(by_source, plan.peer_counts, ep_.size(), local_);
  return etp_ != nullptr ? gather_group(plan, by_expert) : by_expert;
}

Tensor EpExpertExchange::combine(const ExchangePlan& plan, const Tensor& gathered) {
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
  Tensor out = Tensor::empty(shape, rows.dtype(), arena_);
  ep_.all_to_all_v(by_source, send_rows, out, recv_rows);
  return out;
}

}  // namespace metamorph

// Mixture-of-Experts routing ops of the CPU backend: the router's host arithmetic
// (runtime/core/moe_routing) on tensors, the stable counting sort of token slots by expert, and
// the serial un-permutation.
#include <algorithm>
#include <cmath>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

RouterOutput CpuBackend::router_forward(const Tensor& logits, const Tensor& bias,
                                        const RouterSpec& spec) {
  const std::int64_t n = logits.dim(0), E = spec.num_experts;
  MM_ASSERT(logits.rank() == 2 && logits.dim(1) == E && (!bias.defined() || bias.numel() == E),
            "router_forward: logits ", shape_string(logits.shape()), " for ", E, " experts");
  RouterOutput r = empty_router_output(arena(), device(), n, spec);
  r.summary =
      route_rows(logits.data<float>(), n, spec, bias.defined() ? bias.data<float>() : nullptr,
                 r.expert.data<std::int32_t>(), r.gate.data<float>(), r.prob.data<float>(),
                 spec.sigmoid ? r.score.data<float>() : nullptr, r.lse.data<float>());
  return r;
}

void CpuBackend::router_backward(const Tensor& logits, const RouterOutput& r,
                                 const RouterSpec& spec, const Tensor& dgate_rows,
                                 const Tensor& slot_row, float loss_scale, Tensor& dlogits) {
  const std::int64_t n = logits.dim(0), k = spec.top_k;
  MM_ASSERT(slot_row.numel() == n * k && dlogits.shape() == logits.shape(),
            "router_backward: slot_row ", shape_string(slot_row.shape()), " dlogits ",
            shape_string(dlogits.shape()), " for logits ", shape_string(logits.shape()));
  // The gate gradient of every (token, slot), zero for dropped slots.
  std::vector<float> dgate(static_cast<std::size_t>(n * k), 0.0f);
  const auto* row_of = slot_row.data<std::int32_t>();
  const float* dg = dgate_rows.data<float>();
  for (std::int64_t s = 0; s < n * k; ++s) {
    if (row_of[s] < 0) continue;
    MM_ASSERT(row_of[s] < dgate_rows.numel(), "router_backward: row ", row_of[s], " of ",
              dgate_rows.numel());
    dgate[static_cast<std::size_t>(s)] = dg[row_of[s]];
  }
  route_rows_backward(logits.data<float>(), n, spec, r.expert.data<std::int32_t>(),
                      r.gate.data<float>(), r.prob.data<float>(),
                      r.score.defined() ? r.score.data<float>() : nullptr, r.lse.data<float>(),
                      r.summary.counts, dgate.data(), loss_scale, dlogits.data<float>());
}

void CpuBackend::moe_permute(const Tensor& expert, const Tensor& gate,
                             const std::vector<std::int64_t>& kept, Tensor& token_index,
                             Tensor& row_gate, Tensor& slot_row) {
  const std::int64_t slots = expert.numel(), k = expert.dim(-1);
  const auto E = static_cast<std::int64_t>(kept.size());
  std::int64_t rows = 0;
  std::vector<std::int64_t> cursor(kept.size(), 0), end(kept.size(), 0);
  for (std::size_t e = 0; e < kept.size(); ++e) {
    cursor[e] = rows;
    rows += kept[e];
    end[e] = rows;
  }
  MM_ASSERT(gate.numel() == slots && slot_row.numel() == slots && token_index.numel() == rows &&
                row_gate.numel() == rows,
            "moe_permute: ", slots, " slots, ", rows, " kept rows, token_index ",
            shape_string(token_index.shape()), " slot_row ", shape_string(slot_row.shape()));
  const auto* ex = expert.data<std::int32_t>();
  const float* g = gate.data<float>();
  auto* token_of = token_index.data<std::int32_t>();
  float* gate_of = row_gate.data<float>();
  auto* row_of = slot_row.data<std::int32_t>();
  // A stable counting sort: every expert's rows in slot (so token) order; slots past an
  // expert's kept count are dropped.
  for (std::int64_t i = 0; i < slots; ++i) {
    const std::int32_t e = ex[i];
    MM_ASSERT(e >= 0 && e < E, "moe_permute: expert ", e, " outside [0, ", E, ")");
    const auto ue = static_cast<std::size_t>(e);
    if (cursor[ue] == end[ue]) {
      row_of[i] = -1;
      continue;
    }
    const std::int64_t r = cursor[ue]++;
    token_of[r] = static_cast<std::int32_t>(i / k);
    gate_of[r] = g[i];
    row_of[i] = static_cast<std::int32_t>(r);
  }
}

void CpuBackend::moe_combine(const Tensor& rows, const Tensor& token_index, const Tensor& weights,
                             const Tensor& slot_row, Tensor& y, std::int64_t first_row,
                             bool accumulate) {
  MM_ASSERT(y.rank() == 2 && slot_row.numel() % std::max<std::int64_t>(1, y.dim(0)) == 0,
            "moe_combine: slot_row ", shape_string(slot_row.shape()), " for y ",
            shape_string(y.shape()));
  const std::int64_t end = first_row + rows.dim(0);
  MM_ASSERT(first_row >= 0 && end <= token_index.numel(), "moe_combine: rows [", first_row, ", ",
            end, ") of a permutation of ", token_index.numel());
  if (!accumulate) fill(y, 0.0f);
  // Rows are sorted by expert, so walking them in order adds each token's contributions in
  // ascending row order: the order the contract fixes. Rows outside the window add nothing.
  scatter_add_rows(rows, token_index.slice(first_row, end),
                   weights.defined() ? weights.slice(first_row, end) : Tensor(), y);
}

void CpuBackend::sigmoid_forward(const Tensor& x, Tensor& y) {
  MM_ASSERT(x.numel() == y.numel(), "sigmoid_forward: x ", shape_string(x.shape()), " y ",
            shape_string(y.shape()));
  const float* l = x.data<float>();
  float* g = y.data<float>();
  for (std::int64_t i = 0; i < x.numel(); ++i)
    g[i] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(l[i]))));
}

void CpuBackend::sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  MM_ASSERT(dy.numel() == y.numel() && dx.numel() == y.numel(), "sigmoid_backward: dy ",
            shape_string(dy.shape()), " y ", shape_string(y.shape()), " dx ",
            shape_string(dx.shape()));
  const float* d = dy.data<float>();
  const float* g = y.data<float>();
  float* dl = dx.data<float>();
  for (std::int64_t i = 0; i < y.numel(); ++i) dl[i] = d[i] * g[i] * (1.0f - g[i]);
}

}  // namespace metamorph

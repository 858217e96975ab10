#include "runtime/train/zero1.hpp"

#include <algorithm>

#include "models/expert_parallel.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
std::int64_t row_elements(const Parameter& p) {
  return p.value.dim(0) == 0 ? 0 : p.value.numel() / p.value.dim(0);
}
}  // namespace

std::pair<std::int64_t, std::int64_t> Zero1::owned_rows(std::int64_t rows, int r, int d) {
  return {rows * r / d, rows * (r + 1) / d};
}

Zero1::Zero1(Backend& backend, ParameterSet& params, Communicator& dp,
             std::function<bool(const Parameter&)> covers)
    : backend_(backend), params_(params), dp_(dp), covers_(std::move(covers)) {
  if (!covers_) covers_ = [](const Parameter&) { return true; };
  // A rule (not AdamW) updates untrainable state through its whole master on every replica.
  covers_ = [given = std::move(covers_)](const Parameter& p) {
    return given(p) && (p.trainable || !p.master.defined());
  };
  const int d = dp_.size();
  std::vector<std::int64_t> per_replica(static_cast<std::size_t>(d), 0);
  for (auto& p : params_.all()) {
    if (!covers_(p)) continue;
    const std::int64_t rows = p.value.dim(0), width = row_elements(p);
    for (int r = 0; r < d; ++r) {
      const auto [b, e] = owned_rows(rows, r, d);
      per_replica[static_cast<std::size_t>(r)] += (e - b) * width;
    }
    const auto [begin, end] = owned_rows(rows, dp_.rank(), d);
    p.optim_offset = p.offset;
    p.optim_offset[0] += begin;
    Shape block = p.value.shape();
    block[0] = end - begin;
    p.adam_m = backend_.zeros(block);
    p.adam_v = backend_.zeros(block);
    if (p.master.defined()) {
      // A fresh tensor, not a slice: the whole master's storage is released.
      Tensor own = backend_.empty(block, DType::f32);
      backend_.copy(p.master.slice(begin, end), own);
      p.master = own;
    }
  }
  segment_ = *std::max_element(per_replica.begin(), per_replica.end());
}

ParameterSet Zero1::rows_to_write(const ParameterSet& host, int replica, int expert_replica) {
  ParameterSet rows;
  for (const auto& p : host.all()) {
    // Covered parameters (optim_offset set) are this replica's rows: host_parameters placed
    // their master's rows at optim_offset. The others are whole copies, alike on every replica.
    const int r = expert_replica >= 0 && is_expert_parameter(p.name) ? expert_replica : replica;
    if (!p.optim_offset.empty() || r == 0) rows.add(p);
  }
  return rows;
}

void Zero1::copy_rows(int r, bool values, Tensor& segment, bool to_segment) {
  std::int64_t at = 0;
  for (auto& p : params_.all()) {
    if (!covers_(p)) continue;
    const auto [b, e] = owned_rows(p.value.dim(0), r, dp_.size());
    const std::int64_t width = row_elements(p), n = (e - b) * width;
    if (n == 0) continue;
    const Tensor& whole = values ? p.value : p.grad;
    // Through the backend, so the rows may live on a GPU.
    Tensor rows = whole.view({whole.numel()}).slice(b * width, e * width);
    Tensor part = segment.slice(at, at + n);
    if (to_segment)
      backend_.copy(rows, part);
    else
      backend_.copy(part, rows);
    at += n;
  }
  if (to_segment && at < segment_) {
    Tensor tail = segment.slice(at, segment_);
    backend_.fill(tail, 0.0f);
  }
}

void Zero1::reduce_scatter_gradients() {
  Tensor buffer = backend_.empty({segment_ * dp_.size()});
  for (int r = 0; r < dp_.size(); ++r) {
    Tensor part = buffer.slice(r * segment_, (r + 1) * segment_);
    copy_rows(r, false, part, true);
  }
  Tensor mine = backend_.empty({segment_});
  dp_.reduce_scatter(buffer, mine, ReduceOp::sum);
  copy_rows(dp_.rank(), false, mine, false);
}

void Zero1::all_gather_parameters() {
  const DType dtype = backend_.activation_dtype();
  Tensor mine = backend_.empty({segment_}, dtype);
  copy_rows(dp_.rank(), true, mine, true);
  Tensor buffer = backend_.empty({segment_ * dp_.size()}, dtype);
  dp_.all_gather(mine, buffer);
  for (int r = 0; r < dp_.size(); ++r) {
    Tensor part = buffer.slice(r * segment_, (r + 1) * segment_);
    copy_rows(r, true, part, false);
  }
}

}  // namespace metamorph

#include "runtime/train/zero1.hpp"

#include <algorithm>
#include <limits>

#include "models/expert_parallel.hpp"
#include "models/model_config.hpp"
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
             std::function<bool(const Parameter&)> covers, std::int64_t bucket_elements)
    : backend_(backend), params_(params), dp_(dp), covers_(std::move(covers)) {
  if (!covers_) covers_ = [](const Parameter&) { return true; };
  // A rule (not AdamW) updates untrainable state through its whole master on every replica.
  covers_ = [given = std::move(covers_)](const Parameter& p) {
    return given(p) && (p.trainable || !p.master.defined());
  };
  const int d = dp_.size();
  for (auto& p : params_.all()) {
    if (!covers_(p)) continue;
    covered_.push_back(&p);
    const auto [begin, end] = owned_rows(p.value.dim(0), dp_.rank(), d);
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
  plan_buckets(bucket_elements);
}

void Zero1::plan_buckets(std::int64_t bucket_elements) {
  auto close = [&](std::vector<Parameter*> reversed) {
    if (reversed.empty()) return;
    Bucket b;
    b.params.assign(reversed.rbegin(), reversed.rend());
    b.first_layer = std::numeric_limits<std::int64_t>::max();
    for (const Parameter* p : b.params)
      b.first_layer = std::min(b.first_layer, gradient_ready_layer(p->name));
    for (int r = 0; r < dp_.size(); ++r) {
      std::int64_t n = 0;
      for (const Parameter* p : b.params) {
        const auto [begin, end] = owned_rows(p->value.dim(0), r, dp_.size());
        n += (end - begin) * row_elements(*p);
      }
      b.segment = std::max(b.segment, n);
    }
    buckets_.push_back(std::move(b));
  };
  if (bucket_elements <= 0) {
    // One bucket of everything, started after the backward: the unbucketed reduce-scatter.
    close({covered_.rbegin(), covered_.rend()});
    if (!buckets_.empty()) buckets_.back().first_layer = -1;
    return;
  }
  // From the last parameter back, whole layers at a time: a bucket closes at the first layer
  // boundary past bucket_elements, and before the embedding, which becomes final last.
  std::vector<Parameter*> open;
  std::int64_t elements = 0;
  for (auto it = covered_.rbegin(); it != covered_.rend(); ++it) {
    const std::int64_t layer = gradient_ready_layer((*it)->name);
    const bool boundary = !open.empty() && gradient_ready_layer(open.back()->name) != layer;
    if (boundary && (elements >= bucket_elements || layer < 0)) {
      close(std::move(open));
      open.clear();
      elements = 0;
    }
    open.push_back(*it);
    elements += (*it)->value.numel();
  }
  close(std::move(open));
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

void Zero1::copy_rows(const std::vector<Parameter*>& params, std::int64_t segment, int r,
                      bool values, Tensor& part, bool to_segment) {
  std::int64_t at = 0;
  for (Parameter* p : params) {
    const auto [b, e] = owned_rows(p->value.dim(0), r, dp_.size());
    const std::int64_t width = row_elements(*p), n = (e - b) * width;
    if (n == 0) continue;
    const Tensor& whole = values ? p->value : p->grad;
    // Through the backend, so the rows may live on a GPU.
    Tensor rows = whole.view({whole.numel()}).slice(b * width, e * width);
    Tensor piece = part.slice(at, at + n);
    at += n;
    // A rule's state is the same on every replica, and may have moved on since it was sent.
    if (!to_segment && values && !p->trainable) continue;
    if (to_segment)
      backend_.copy(rows, piece);
    else
      backend_.copy(piece, rows);
  }
  if (to_segment && at < segment) {
    Tensor tail = part.slice(at, segment);
    backend_.fill(tail, 0.0f);
  }
}

void Zero1::start(Bucket& bucket) {
  MM_ASSERT(!bucket.request, "a ZeRO-1 gradient bucket started twice in one step");
  const int d = dp_.size();
  bucket.all_rows = backend_.empty({bucket.segment * d});
  for (int r = 0; r < d; ++r) {
    Tensor part = bucket.all_rows.slice(r * bucket.segment, (r + 1) * bucket.segment);
    copy_rows(bucket.params, bucket.segment, r, false, part, true);
  }
  bucket.own_sums = backend_.empty({bucket.segment});
  bucket.request = dp_.start_reduce_scatter(bucket.all_rows, bucket.own_sums, ReduceOp::sum);
}

void Zero1::gradients_ready(std::int64_t layer) {
  // Completed reduce-scatters give their staging back first, so only the buckets still on the
  // wire hold it while the backward goes on.
  while (finished_ < started_ && buckets_[static_cast<std::size_t>(finished_)].request->test())
    finish_reduce(buckets_[static_cast<std::size_t>(finished_++)]);
  // Buckets start in their fixed order on every replica, so the collectives match.
  while (started_ < bucket_count() &&
         buckets_[static_cast<std::size_t>(started_)].first_layer >= layer)
    start(buckets_[static_cast<std::size_t>(started_++)]);
}

void Zero1::finish_reduce(Bucket& bucket) {
  bucket.request->wait();
  copy_rows(bucket.params, bucket.segment, dp_.rank(), false, bucket.own_sums, false);
  bucket.request.reset();
  bucket.all_rows = Tensor();
  bucket.own_sums = Tensor();
}

void Zero1::reduce_scatter_gradients() {
  finish_all_gather();  // the forward has finished them already
  for (; started_ < bucket_count(); ++started_) start(buckets_[static_cast<std::size_t>(started_)]);
  for (; finished_ < bucket_count(); ++finished_)
    finish_reduce(buckets_[static_cast<std::size_t>(finished_)]);
  started_ = finished_ = 0;
}

void Zero1::all_gather_parameters() {
  start_all_gather();
  finish_all_gather();
}

void Zero1::start_all_gather() {
  finish_all_gather();
  const DType dtype = backend_.activation_dtype();
  // In the forward's order, so the first layers' rows arrive first.
  for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
    Bucket& b = *it;
    b.own_values = backend_.empty({b.segment}, dtype);
    copy_rows(b.params, b.segment, dp_.rank(), true, b.own_values, true);
    b.all_values = backend_.empty({b.segment * dp_.size()}, dtype);
    b.gather = dp_.start_all_gather(b.own_values, b.all_values);
  }
  gather_next_ = bucket_count() - 1;
}

void Zero1::parameters_needed(std::int64_t layer) {
  while (gather_next_ >= 0 && buckets_[static_cast<std::size_t>(gather_next_)].first_layer <= layer)
    finish_gather(buckets_[static_cast<std::size_t>(gather_next_--)]);
}

void Zero1::finish_all_gather() {
  while (gather_next_ >= 0) finish_gather(buckets_[static_cast<std::size_t>(gather_next_--)]);
}

void Zero1::finish_gather(Bucket& bucket) {
  bucket.gather->wait();
  for (int r = 0; r < dp_.size(); ++r) {
    if (r == dp_.rank()) continue;  // its own rows are the ones it sent
    Tensor part = bucket.all_values.slice(r * bucket.segment, (r + 1) * bucket.segment);
    copy_rows(bucket.params, bucket.segment, r, true, part, false);
  }
  bucket.gather.reset();
  bucket.own_values = Tensor();
  bucket.all_values = Tensor();
}

}  // namespace metamorph

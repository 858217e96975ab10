#include "runtime/train/replica_sync.hpp"

#include <algorithm>
#include <vector>

#include "models/expert_parallel.hpp"
#include "models/model_config.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

double sum_scalar(Communicator& group, double value, Arena& arena) {
  Tensor t = Tensor::empty({1}, DType::f32, arena);
  t.data<float>()[0] = static_cast<float>(value);
  group.all_reduce(t, ReduceOp::sum);
  return static_cast<double>(t.data<float>()[0]);
}

std::int64_t max_count(Communicator& group, std::int64_t value, Arena& arena) {
  Tensor t = Tensor::empty({1}, DType::i64, arena);
  t.data<std::int64_t>()[0] = value;
  group.all_reduce(t, ReduceOp::max);
  return t.data<std::int64_t>()[0];
}

void reduce_flat_gradients(Communicator& dp, ParameterSet& params, std::int64_t bucket_elements) {
  MM_ASSERT(params.flat_grads.defined(), "data parallelism needs the flat gradient buffer");
  Tensor& flat = params.flat_grads;
  const std::int64_t n = flat.numel();
  std::vector<Tensor> buckets;
  std::vector<std::unique_ptr<CommRequest>> requests;
  for (std::int64_t begin = 0; begin < n; begin += bucket_elements) {
    buckets.push_back(flat.slice(begin, std::min(n, begin + bucket_elements)));
    requests.push_back(dp.start_all_reduce(buckets.back(), ReduceOp::sum));
  }
  for (auto& r : requests) r->wait();
}

std::vector<GradientRun> gradient_runs(const ParameterSet& params) {
  const auto* base = params.flat_grads.data<float>();
  std::vector<GradientRun> runs;
  for (const auto& p : params.all()) {
    const std::int64_t at = p.grad.data<float>() - base, n = p.grad.numel();
    const bool expert = is_expert_parameter(p.name);
    if (!runs.empty() && runs.back().expert == expert && runs.back().end == at)
      runs.back().end = at + n;
    else
      runs.push_back({at, at + n, expert});
  }
  return runs;
}

void reduce_flat_gradients(Communicator& dp, Communicator& expert_dp, ParameterSet& params,
                           std::int64_t bucket_elements) {
  MM_ASSERT(params.flat_grads.defined(), "data parallelism needs the flat gradient buffer");
  Tensor& flat = params.flat_grads;
  std::vector<Tensor> buckets;
  std::vector<std::unique_ptr<CommRequest>> requests;
  for (const GradientRun& run : gradient_runs(params)) {
    Communicator& group = run.expert ? expert_dp : dp;
    if (group.size() == 1) continue;
    for (std::int64_t begin = run.begin; begin < run.end; begin += bucket_elements) {
      buckets.push_back(flat.slice(begin, std::min(run.end, begin + bucket_elements)));
      requests.push_back(group.start_all_reduce(buckets.back(), ReduceOp::sum));
    }
  }
  for (auto& r : requests) r->wait();
}

OverlappedGradientReduce::OverlappedGradientReduce(Communicator& dp, ParameterSet& params,
                                                   std::int64_t bucket_elements,
                                                   Communicator* expert_dp)
    : dp_(dp), expert_dp_(expert_dp), params_(params), bucket_(bucket_elements) {
  if (expert_dp_ != nullptr) runs_ = gradient_runs(params);
  MM_ASSERT(params.flat_grads.defined(), "overlapped reduction needs the flat gradient buffer");
  const auto* base = params.flat_grads.data<float>();
  for (const auto& p : params.all()) {
    const std::int64_t layer = gradient_ready_layer(p.name);
    if (layer < 0) continue;  // the embedding: reduced last, by finish()
    const std::int64_t at = p.grad.data<float>() - base;
    auto [it, inserted] = layer_start_.emplace(layer, at);
    if (!inserted) it->second = std::min(it->second, at);
  }
  reduced_from_ = params.flat_grads.numel();
}

void OverlappedGradientReduce::start(std::int64_t begin, std::int64_t end) {
  if (expert_dp_ == nullptr) {
    buckets_.push_back(params_.flat_grads.slice(begin, end));
    requests_.push_back(dp_.start_all_reduce(buckets_.back(), ReduceOp::sum));
    return;
  }
  // Under expert parallelism a bucket splits where expert and other gradients meet.
  for (const GradientRun& run : runs_) {
    const std::int64_t b = std::max(begin, run.begin), e = std::min(end, run.end);
    Communicator& group = run.expert ? *expert_dp_ : dp_;
    if (b >= e || group.size() == 1) continue;
    buckets_.push_back(params_.flat_grads.slice(b, e));
    requests_.push_back(group.start_all_reduce(buckets_.back(), ReduceOp::sum));
  }
}

void OverlappedGradientReduce::gradients_ready(std::int64_t layer) {
  // The final suffix starts at the first gradient of this layer (or of the next one held).
  const auto it = layer_start_.lower_bound(layer);
  const std::int64_t ready = it == layer_start_.end() ? -1 : it->second;
  if (ready < 0 || reduced_from_ - ready < bucket_) return;
  start(ready, reduced_from_);
  reduced_from_ = ready;
}

void OverlappedGradientReduce::finish() {
  if (reduced_from_ > 0) start(0, reduced_from_);
  for (auto& r : requests_) r->wait();
  requests_.clear();
  buckets_.clear();
  // Ready for the next step, whether or not its backward reports progress.
  reduced_from_ = params_.flat_grads.numel();
}

}  // namespace metamorph

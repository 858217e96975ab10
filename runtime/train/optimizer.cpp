#include "runtime/train/optimizer.hpp"

#include <cmath>
#include <cstring>
#include <vector>

#include "models/expert_parallel.hpp"

namespace metamorph {

AdamW::AdamW(Backend& backend, ParameterSet& params, AdamWOptions options, ReduceSum reduce_sum,
             CountedHere counted_here, ReduceSum expert_reduce_sum)
    : backend_(backend),
      params_(params),
      options_(options),
      reduce_sum_(std::move(reduce_sum)),
      counted_here_(std::move(counted_here)),
      expert_reduce_sum_(std::move(expert_reduce_sum)) {
  for (auto& p : params_.all()) {
    if (!p.adam_m.defined()) p.adam_m = backend_.zeros(p.value.shape());
    if (!p.adam_v.defined()) p.adam_v = backend_.zeros(p.value.shape());
  }
}

Tensor optimizer_rows(const Parameter& p, const Tensor& t) {
  if (p.optim_offset.empty() || p.adam_m.shape() == p.value.shape()) return t;
  const std::int64_t begin = p.optim_offset[0] - p.offset[0];
  return t.slice(begin, begin + p.adam_m.dim(0));
}

double AdamW::grad_norm() {
  std::vector<const Parameter*> counted;
  for (const auto& p : params_.all())
    if (p.trainable && counted_here_(p)) counted.push_back(&p);
  // Every tensor's sum lands on the device first and comes back in one copy; they are added
  // on the host in parameter order as before.
  std::vector<double> squares(counted.size());
  if (!counted.empty()) {
    Tensor sums = backend_.empty({static_cast<std::int64_t>(counted.size())}, DType::i64);
    for (std::size_t i = 0; i < counted.size(); ++i)
      backend_.sum_squares_into(optimizer_rows(*counted[i], counted[i]->grad), sums,
                                static_cast<std::int64_t>(i));
    const Tensor host = backend_.to_host(sums, DType::i64);
    std::memcpy(squares.data(), host.raw(), squares.size() * sizeof(double));
  }
  double local = 0.0, experts = 0.0;
  for (std::size_t i = 0; i < counted.size(); ++i)
    (expert_reduce_sum_ && is_expert_parameter(counted[i]->name) ? experts : local) += squares[i];
  const double total =
      reduce_sum_(local) + (expert_reduce_sum_ ? expert_reduce_sum_(experts) : 0.0);
  return std::sqrt(total);
}

void AdamW::step(double lr, double grad_norm) {
  ++step_;
  if (options_.clip_norm > 0 && grad_norm > options_.clip_norm) {
    const auto factor = static_cast<float>(options_.clip_norm / (grad_norm + 1e-6));
    for (auto& p : params_.all()) {
      if (!p.trainable) continue;
      Tensor rows = optimizer_rows(p, p.grad);
      backend_.scale(rows, factor);
    }
  }
  AdamWHyper hyper;
  hyper.lr = static_cast<float>(lr);
  hyper.beta1 = static_cast<float>(options_.beta1);
  hyper.beta2 = static_cast<float>(options_.beta2);
  hyper.eps = static_cast<float>(options_.eps);
  hyper.step = step_;
  for (auto& p : params_.all()) {
    if (!p.trainable) continue;  // updated by its own rule (MoE balancing bias)
    hyper.weight_decay = p.weight_decay ? static_cast<float>(options_.weight_decay) : 0.0f;
    Tensor value = optimizer_rows(p, p.value);
    if (!p.master.defined()) {
      backend_.adamw_step(value, optimizer_rows(p, p.grad), p.adam_m, p.adam_v, hyper);
      continue;
    }
    // bf16 weights: the update lands on the fp32 master, and the weights are its rounding.
    backend_.adamw_step_rounded(p.master, optimizer_rows(p, p.grad), p.adam_m, p.adam_v, hyper,
                                value);
  }
}

void AdamW::zero_grad() {
  if (params_.flat_grads.defined()) {
    backend_.fill(params_.flat_grads, 0.0f);
    return;
  }
  for (auto& p : params_.all()) backend_.fill(p.grad, 0.0f);
}

}  // namespace metamorph

#include "models/router.hpp"

#include <numeric>

#include "runtime/core/error.hpp"

namespace metamorph {

RouterSpec router_spec(const MoeConfig& c) {
  RouterSpec spec;
  spec.num_experts = c.num_experts;
  spec.top_k = c.top_k;
  spec.sigmoid = c.scoring == RouterScoring::sigmoid_bias;
  // topk_then_softmax is a softmax over the k selected logits, which is the same as
  // renormalising their global softmax probabilities.
  spec.renormalise = c.norm_topk_prob || c.scoring == RouterScoring::topk_then_softmax;
  spec.aux_loss_coef = c.aux_loss_coef;
  spec.z_loss_coef = c.z_loss_coef;
  spec.force_balance = c.force_balance;
  return spec;
}

Routing route(const float* logits, std::int64_t tokens, const MoeConfig& c, const float* bias) {
  const RouterSpec spec = router_spec(c);
  Routing r;
  r.tokens = tokens;
  r.num_experts = c.num_experts;
  r.top_k = c.top_k;
  const auto n = static_cast<std::size_t>(tokens);
  const auto ne = static_cast<std::size_t>(c.num_experts), nk = static_cast<std::size_t>(c.top_k);
  r.expert.resize(n * nk);
  r.gate.resize(n * nk);
  r.prob.resize(n * ne);
  r.lse.resize(n);
  if (spec.sigmoid) r.score.resize(n * ne);
  RouterSummary s =
      route_rows(logits, tokens, spec, bias, r.expert.data(), r.gate.data(), r.prob.data(),
                 spec.sigmoid ? r.score.data() : nullptr, r.lse.data());
  r.counts = std::move(s.counts);
  r.aux_loss = s.aux_loss;
  r.z_loss = s.z_loss;
  r.entropy = s.entropy;
  return r;
}

void route_backward(const Routing& r, const float* logits, const MoeConfig& c, const float* dgate,
                    float loss_scale, float* dlogits) {
  route_rows_backward(logits, r.tokens, router_spec(c), r.expert.data(), r.gate.data(),
                      r.prob.data(), r.score.empty() ? nullptr : r.score.data(), r.lse.data(),
                      r.counts, dgate, loss_scale, dlogits);
}

void update_balancing_bias(float* bias, const std::vector<double>& load, double rate) {
  if (load.empty()) return;
  const double mean =
      std::accumulate(load.begin(), load.end(), 0.0) / static_cast<double>(load.size());
  for (std::size_t e = 0; e < load.size(); ++e) {
    const double gap = mean - load[e];
    const double sign = gap > 0 ? 1.0 : (gap < 0 ? -1.0 : 0.0);
    bias[e] = static_cast<float>(bias[e] + rate * sign);
  }
}

}  // namespace metamorph

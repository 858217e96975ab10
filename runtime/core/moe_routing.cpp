#include "runtime/core/moe_routing.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/core/error.hpp"

namespace metamorph {

RouterOutput empty_router_output(Arena& arena, Device device, std::int64_t tokens,
                                 const RouterSpec& spec) {
  RouterOutput r;
  r.expert = Tensor::empty({tokens, spec.top_k}, DType::i32, arena, device);
  r.gate = Tensor::empty({tokens, spec.top_k}, DType::f32, arena, device);
  r.prob = Tensor::empty({tokens, spec.num_experts}, DType::f32, arena, device);
  if (spec.sigmoid) r.score = Tensor::empty({tokens, spec.num_experts}, DType::f32, arena, device);
  r.lse = Tensor::empty({tokens}, DType::f32, arena, device);
  return r;
}

RouterSummary route_rows(const float* logits, std::int64_t tokens, const RouterSpec& c,
                         const float* bias, std::int32_t* expert, float* gate, float* prob,
                         float* score, float* lse_out) {
  const std::int64_t E = c.num_experts, k = c.top_k;
  MM_ASSERT(E > 0 && k > 0 && k <= E, "route: ", k, " of ", E, " experts");
  MM_ASSERT(!c.sigmoid || score != nullptr || tokens == 0, "route: sigmoid scoring needs scores");
  const auto n = static_cast<std::size_t>(tokens);
  const auto ne = static_cast<std::size_t>(E), nk = static_cast<std::size_t>(k);
  RouterSummary r;
  r.counts.assign(ne, 0);
  std::vector<double> mean_prob(ne, 0.0);
  std::vector<double> key(ne);
  std::vector<std::int32_t> order(ne);
  double z_sum = 0.0, entropy_sum = 0.0;
  for (std::size_t t = 0; t < n; ++t) {
    const float* l = logits + t * ne;
    double max = l[0];
    for (std::size_t e = 1; e < ne; ++e) max = std::max(max, static_cast<double>(l[e]));
    double sum = 0.0;
    for (std::size_t e = 0; e < ne; ++e) sum += std::exp(l[e] - max);
    const double lse = max + std::log(sum);
    lse_out[t] = static_cast<float>(lse);
    z_sum += lse * lse;
    // base: what the selected gates are made of (probabilities or sigmoid scores).
    float* base = c.sigmoid ? &score[t * ne] : &prob[t * ne];
    if (c.sigmoid) {
      double total = 0.0;
      for (std::size_t e = 0; e < ne; ++e) {
        base[e] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(l[e]))));
        total += base[e];
      }
      for (std::size_t e = 0; e < ne; ++e) prob[t * ne + e] = static_cast<float>(base[e] / total);
      for (std::size_t e = 0; e < ne; ++e) key[e] = base[e] + (bias ? bias[e] : 0.0f);
    } else {
      for (std::size_t e = 0; e < ne; ++e) {
        base[e] = static_cast<float>(std::exp(l[e] - lse));
        key[e] = l[e];  // softmax is monotonic: the same order as the probabilities
      }
    }
    for (std::size_t e = 0; e < ne; ++e) {
      const double p = prob[t * ne + e];
      mean_prob[e] += p;
      if (p > 0) entropy_sum -= p * std::log(p);
    }
    if (c.force_balance) {
      for (std::size_t j = 0; j < nk; ++j)
        order[j] =
            balanced_expert(static_cast<std::int64_t>(t), static_cast<std::int64_t>(j), k, E);
    } else {
      // Top-k by key, ties to the lower expert id (deterministic).
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(
          order.begin(), order.begin() + k, order.end(), [&](std::int32_t a, std::int32_t b) {
            const auto ua = static_cast<std::size_t>(a), ub = static_cast<std::size_t>(b);
            return key[ua] > key[ub] || (key[ua] == key[ub] && a < b);
          });
    }
    double selected = 0.0;
    for (std::size_t j = 0; j < nk; ++j) selected += base[static_cast<std::size_t>(order[j])];
    const double divisor = c.renormalise ? selected : 1.0;
    for (std::size_t j = 0; j < nk; ++j) {
      const auto e = static_cast<std::size_t>(order[j]);
      expert[t * nk + j] = order[j];
      gate[t * nk + j] = static_cast<float>(base[e] / divisor);
      ++r.counts[e];
    }
  }
  if (tokens > 0) {
    const double slots = static_cast<double>(tokens * k);
    double balance = 0.0;
    for (std::size_t e = 0; e < ne; ++e)
      balance +=
          static_cast<double>(r.counts[e]) / slots * (mean_prob[e] / static_cast<double>(tokens));
    r.aux_loss = c.aux_loss_coef * static_cast<double>(E) * balance;
    r.z_loss = c.z_loss_coef * z_sum / static_cast<double>(tokens);
    r.entropy = entropy_sum / static_cast<double>(tokens);
  }
  return r;
}

void route_rows_backward(const float* logits, std::int64_t tokens, const RouterSpec& c,
                         const std::int32_t* expert, const float* gate, const float* prob,
                         const float* score, const float* lse_in,
                         const std::vector<std::int64_t>& counts, const float* dgate,
                         float loss_scale, float* dlogits) {
  const auto n = static_cast<std::size_t>(tokens);
  const auto ne = static_cast<std::size_t>(c.num_experts), nk = static_cast<std::size_t>(c.top_k);
  if (n == 0) return;
  MM_ASSERT(counts.size() == ne, "route backward: counts of ", counts.size(), " experts for ", ne);
  const double ntokens = static_cast<double>(tokens);
  // d aux / d P_e = coef * E * f_e, and P_e is a mean over tokens.
  std::vector<double> daux(ne);
  for (std::size_t e = 0; e < ne; ++e)
    daux[e] = loss_scale * c.aux_loss_coef * static_cast<double>(c.num_experts) *
              (static_cast<double>(counts[e]) / (ntokens * static_cast<double>(nk))) / ntokens;
  const double dz_coef = loss_scale * c.z_loss_coef * 2.0 / ntokens;
  std::vector<double> dbase(ne);
  for (std::size_t t = 0; t < n; ++t) {
    const float* base = c.sigmoid ? &score[t * ne] : &prob[t * ne];
    std::fill(dbase.begin(), dbase.end(), 0.0);
    // Gates: g_j = base_j / S (S = sum of the selected bases) or g_j = base_j.
    if (c.renormalise) {
      double selected = 0.0, dot = 0.0;
      for (std::size_t j = 0; j < nk; ++j) {
        selected += base[static_cast<std::size_t>(expert[t * nk + j])];
        dot += static_cast<double>(dgate[t * nk + j]) * gate[t * nk + j];
      }
      for (std::size_t j = 0; j < nk; ++j)
        dbase[static_cast<std::size_t>(expert[t * nk + j])] += (dgate[t * nk + j] - dot) / selected;
    } else {
      for (std::size_t j = 0; j < nk; ++j)
        dbase[static_cast<std::size_t>(expert[t * nk + j])] += dgate[t * nk + j];
    }
    float* dl = dlogits + t * ne;
    const float* l = logits + t * ne;
    if (c.sigmoid) {
      // The balancing loss sees q = s / sum(s): ds_j += (dq_j - sum_e dq_e q_e) / sum(s).
      double total = 0.0, dot = 0.0;
      for (std::size_t e = 0; e < ne; ++e) {
        total += base[e];
        dot += daux[e] * prob[t * ne + e];
      }
      for (std::size_t e = 0; e < ne; ++e) {
        const double ds = dbase[e] + (daux[e] - dot) / total;
        dl[e] = static_cast<float>(ds * base[e] * (1.0 - base[e]));
      }
    } else {
      // Softmax backward of dp = dbase + daux.
      double dot = 0.0;
      for (std::size_t e = 0; e < ne; ++e) dot += (dbase[e] + daux[e]) * base[e];
      for (std::size_t e = 0; e < ne; ++e)
        dl[e] = static_cast<float>(base[e] * (dbase[e] + daux[e] - dot));
    }
    // z-loss: d(lse^2)/dl_e = 2 lse softmax_e.
    if (c.z_loss_coef > 0) {
      const double lse = lse_in[t];
      for (std::size_t e = 0; e < ne; ++e)
        dl[e] += static_cast<float>(dz_coef * lse * std::exp(l[e] - lse));
    }
  }
}

}  // namespace metamorph

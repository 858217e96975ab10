// The benchmark-only balanced routing (RouterSpec::force_balance, `train --moe-force-balance`):
// the CPU backend's router_forward gives every expert floor or ceil(T k / E) slots of a forward
// however skewed the router is; the gates are the router's probabilities (or sigmoid scores) of
// the forced experts, normalised as configured, written out independently here; the backward
// matches central differences of the forward; and an MoE block counts the balanced rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include "models/init.hpp"
#include "models/moe_block.hpp"
#include "models/router.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/rng/philox.hpp"
#include "tests/unit/models/router_gradient_check.hpp"

namespace metamorph {
namespace {

std::vector<float> normals(std::size_t n, const char* purpose, double std) {
  return test::normal_values(17, n, purpose, std);
}

// Logits that make the router's own choice very uneven: expert 0 (then 1) wins for every token.
std::vector<float> skewed_logits(std::int64_t tokens, std::int64_t E) {
  std::vector<float> l = normals(static_cast<std::size_t>(tokens * E), "forced.logits", 0.3);
  for (std::int64_t t = 0; t < tokens; ++t) {
    l[static_cast<std::size_t>(t * E)] += 4.0f;
    if (E > 1) l[static_cast<std::size_t>(t * E + 1)] += 2.0f;
  }
  return l;
}

MoeConfig moe(RouterScoring scoring, std::int64_t E, std::int64_t k, bool norm, bool forced) {
  MoeConfig m;
  m.num_experts = E;
  m.top_k = k;
  m.expert_intermediate_size = 8;
  m.scoring = scoring;
  m.norm_topk_prob = norm;
  m.aux_loss_coef = 0.3;
  m.z_loss_coef = 0.2;
  m.force_balance = forced;
  return m;
}

const RouterScoring kScorings[] = {RouterScoring::softmax_then_topk,
                                   RouterScoring::topk_then_softmax, RouterScoring::sigmoid_bias};

TEST(ForcedRouting, EveryExpertGetsTheBalancedCountOfSlotsOfAForward) {
  Arena arena;
  CpuBackend cpu(arena);
  // (tokens, E, k): T k divisible by E or not, k = 1 and k = E.
  for (auto [T, E, k] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{16, 8, 2},
                         {37, 8, 2},
                         {7, 5, 3},
                         {10, 6, 1},
                         {3, 8, 2},
                         {9, 4, 4}}) {
    for (RouterScoring scoring : kScorings) {
      const std::string label = std::string(router_scoring_name(scoring)) + " T" +
                                std::to_string(T) + " E" + std::to_string(E) + " k" +
                                std::to_string(k);
      const std::vector<float> l = skewed_logits(T, E);
      Tensor logits = cpu.empty({T, E});
      std::copy(l.begin(), l.end(), logits.data<float>());
      const Tensor bias;  // a balancing bias would not change a forced choice either
      const RouterOutput routed =
          cpu.router_forward(logits, bias, router_spec(moe(scoring, E, k, true, true)));
      const RouterOutput free =
          cpu.router_forward(logits, bias, router_spec(moe(scoring, E, k, true, false)));
      const std::int64_t low = T * k / E, high = (T * k + E - 1) / E;
      std::vector<std::int64_t> counted(static_cast<std::size_t>(E), 0);
      const auto* expert = routed.expert.data<std::int32_t>();
      for (std::int64_t t = 0; t < T; ++t) {
        std::set<std::int32_t> distinct;
        for (std::int64_t j = 0; j < k; ++j) {
          const std::int32_t e = expert[t * k + j];
          ASSERT_GE(e, 0) << label;
          ASSERT_LT(e, E) << label;
          distinct.insert(e);
          ++counted[static_cast<std::size_t>(e)];
        }
        EXPECT_EQ(static_cast<std::int64_t>(distinct.size()), k)
            << label << ": token " << t << " repeats an expert";
      }
      EXPECT_EQ(counted, routed.summary.counts) << label << ": summary counts";
      for (std::int64_t e = 0; e < E; ++e) {
        EXPECT_GE(counted[static_cast<std::size_t>(e)], low) << label << " expert " << e;
        EXPECT_LE(counted[static_cast<std::size_t>(e)], high) << label << " expert " << e;
      }
      // The router itself would have sent every token to expert 0: the forcing is what balances.
      if (k < E) {
        EXPECT_EQ(free.summary.counts[0], T) << label;
      }
    }
  }
}

// Gates and losses from the logits, written out in double: softmax probabilities of the forced
// experts (Mixtral: the softmax over the forced experts' logits), sigmoid scores for sigmoid
// scoring, divided by their sum when renormalised; aux = coef E sum_e f_e P_e, z = coef mean lse^2.
TEST(ForcedRouting, GatesAreTheRoutersNormalisedScoresOfTheForcedExperts) {
  const std::int64_t T = 11, E = 6;
  for (RouterScoring scoring : kScorings) {
    for (std::int64_t k : {1, 2, 3}) {
      for (bool norm : {true, false}) {
        const MoeConfig c = moe(scoring, E, k, norm, true);
        const std::string label = std::string(router_scoring_name(scoring)) + " k" +
                                  std::to_string(k) + (norm ? " norm" : " raw");
        const std::vector<float> l = skewed_logits(T, E);
        const std::vector<float> bias = normals(static_cast<std::size_t>(E), "forced.bias", 1.0);
        const Routing r =
            route(l.data(), T, c, scoring == RouterScoring::sigmoid_bias ? bias.data() : nullptr);
        std::vector<double> mean_p(static_cast<std::size_t>(E), 0.0);
        std::vector<double> f(static_cast<std::size_t>(E), 0.0);
        double z = 0.0;
        for (std::int64_t t = 0; t < T; ++t) {
          const float* lt = &l[static_cast<std::size_t>(t * E)];
          double sum_exp = 0.0, sum_sig = 0.0;
          for (std::int64_t e = 0; e < E; ++e) {
            sum_exp += std::exp(static_cast<double>(lt[e]));
            sum_sig += 1.0 / (1.0 + std::exp(-static_cast<double>(lt[e])));
          }
          z += std::log(sum_exp) * std::log(sum_exp);
          std::vector<std::int64_t> chosen;
          for (std::int64_t j = 0; j < k; ++j) chosen.push_back((t * k + j) % E);
          for (std::int64_t e = 0; e < E; ++e) {
            const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(lt[e])));
            mean_p[static_cast<std::size_t>(e)] +=
                (scoring == RouterScoring::sigmoid_bias ? s / sum_sig : std::exp(lt[e]) / sum_exp) /
                static_cast<double>(T);
          }
          double chosen_sum = 0.0, chosen_exp = 0.0;
          for (std::int64_t e : chosen) {
            f[static_cast<std::size_t>(e)] += 1.0 / static_cast<double>(T * k);
            chosen_exp += std::exp(static_cast<double>(lt[e]));
            chosen_sum += scoring == RouterScoring::sigmoid_bias
                              ? 1.0 / (1.0 + std::exp(-static_cast<double>(lt[e])))
                              : std::exp(lt[e]) / sum_exp;
          }
          for (std::int64_t j = 0; j < k; ++j) {
            const std::int64_t e = chosen[static_cast<std::size_t>(j)];
            double want = 0.0;
            if (scoring == RouterScoring::topk_then_softmax) {
              want = std::exp(static_cast<double>(lt[e])) / chosen_exp;
            } else {
              const double base = scoring == RouterScoring::sigmoid_bias
                                      ? 1.0 / (1.0 + std::exp(-static_cast<double>(lt[e])))
                                      : std::exp(static_cast<double>(lt[e])) / sum_exp;
              want = norm ? base / chosen_sum : base;
            }
            const auto slot = static_cast<std::size_t>(t * k + j);
            EXPECT_EQ(r.expert[slot], e) << label << " token " << t << " slot " << j;
            EXPECT_NEAR(r.gate[slot], want, 1e-6) << label << " token " << t << " slot " << j;
          }
        }
        double balance = 0.0;
        for (std::size_t e = 0; e < f.size(); ++e) balance += f[e] * mean_p[e];
        EXPECT_NEAR(r.aux_loss, c.aux_loss_coef * static_cast<double>(E) * balance, 1e-6) << label;
        EXPECT_NEAR(r.z_loss, c.z_loss_coef * z / static_cast<double>(T), 1e-5) << label;
      }
    }
  }
}

// The forced choice does not move with the logits, so the objective is smooth everywhere and
// every logit is checked (no tie to step across).
TEST(ForcedRouting, RouterBackwardMatchesCentralDifferences) {
  const std::int64_t T = 7, E = 5;
  for (RouterScoring scoring : kScorings) {
    for (auto [k, norm] : {std::pair<std::int64_t, bool>{2, true}, {3, false}, {1, false}}) {
      const MoeConfig c = moe(scoring, E, k, norm, true);
      const std::string label = std::string(router_scoring_name(scoring)) + " k" +
                                std::to_string(k) + (norm ? " norm" : " raw");
      const std::vector<float> dgate = normals(static_cast<std::size_t>(T * k), "forced.dg", 1.0);
      const std::vector<float> bias = normals(static_cast<std::size_t>(E), "forced.bias", 0.2);
      const float* b = scoring == RouterScoring::sigmoid_bias ? bias.data() : nullptr;
      test::expect_router_backward_matches_central_differences(skewed_logits(T, E), T, c, b, dgate,
                                                               1.3f, true, label);
    }
  }
}

// Through a whole block: a forward of T tokens routes floor or ceil(T k / E) rows to every
// expert, and the backward runs (router gradient present).
TEST(ForcedRouting, MoeBlockRoutesTheBalancedRowsToEveryExpert) {
  Arena arena;
  CpuBackend cpu(arena);
  const nlohmann::json j = {{"model_type", "qwen2_moe"},  {"vocab_size", 16},
                            {"hidden_size", 8},           {"intermediate_size", 12},
                            {"num_hidden_layers", 1},     {"num_attention_heads", 2},
                            {"num_experts", 4},           {"num_experts_per_tok", 2},
                            {"moe_intermediate_size", 6}, {"initializer_range", 0.5}};
  ModelConfig c = model_config_from_json(j);
  c.moe.force_balance = true;
  ParameterSet params = make_parameters(cpu, c);
  init_parameters(params, c, 3);
  LocalExpertExchange exchange(4);
  MoeBlock block(cpu, c.moe, moe_weights(params, c, 0, exchange), exchange);
  for (std::int64_t tokens : {6, 9}) {
    Tensor x = cpu.empty({tokens, 8});
    const auto v = normals(static_cast<std::size_t>(x.numel()), "forced.x", 1.0);
    std::copy(v.begin(), v.end(), x.data<float>());
    block.reset_stats();
    Tensor y = block.forward(x);
    const double low = static_cast<double>(tokens * 2 / 4);
    for (double rows : block.stats().expert_tokens) {
      EXPECT_GE(rows, low) << tokens << " tokens";
      EXPECT_LE(rows, low + 1) << tokens << " tokens";
    }
    Tensor dy = cpu.empty({tokens, 8});
    std::fill(dy.data<float>(), dy.data<float>() + dy.numel(), 0.5f);
    block.backward(dy);
  }
  const Tensor& router_grad = params.find("model.layers.0.mlp.gate.weight")->grad;
  double norm = 0.0;
  for (std::int64_t i = 0; i < router_grad.numel(); ++i)
    norm += std::abs(router_grad.data<float>()[i]);
  EXPECT_GT(norm, 0.0);
}

}  // namespace
}  // namespace metamorph

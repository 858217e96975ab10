// The MoE router by finite differences (scoring, gates, aux and z losses; independent of the
// PyTorch reference), the balancing-bias rule, capacity arithmetic, FIFO backward, HF names and
// the refusals.
#include <gtest/gtest.h>

#include <cmath>

#include "models/hf_names.hpp"
#include "models/init.hpp"
#include "models/moe_block.hpp"
#include "models/router.hpp"
#include "models/tp_group_expert_exchange.hpp"
#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"
#include "tests/unit/models/router_gradient_check.hpp"

namespace metamorph {
namespace {

MoeConfig moe(RouterScoring scoring, std::int64_t k, bool norm) {
  MoeConfig m;
  m.num_experts = 5;
  m.top_k = k;
  m.expert_intermediate_size = 8;
  m.scoring = scoring;
  m.norm_topk_prob = norm;
  m.aux_loss_coef = 0.3;
  m.z_loss_coef = 0.2;
  return m;
}

std::vector<float> normals(std::size_t n, const char* purpose, double std) {
  return test::normal_values(9, n, purpose, std);
}

struct RouterCase {
  const char* label;
  RouterScoring scoring;
  std::int64_t k;
  bool norm;
  friend void PrintTo(const RouterCase& c, std::ostream* out) { *out << c.label; }
};

class RouterFiniteDifferences : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterFiniteDifferences, BackwardMatchesCentralDifferences) {
  const RouterCase rc = GetParam();
  const MoeConfig c = moe(rc.scoring, rc.k, rc.norm);
  const std::int64_t tokens = 6, E = c.num_experts;
  std::vector<float> logits = normals(static_cast<std::size_t>(tokens * E), "fd.logits", 1.5);
  const std::vector<float> dgate =
      normals(static_cast<std::size_t>(tokens * c.top_k), "fd.dg", 1.0);
  const std::vector<float> bias = normals(static_cast<std::size_t>(E), "fd.bias", 0.2);
  const float* b = rc.scoring == RouterScoring::sigmoid_bias ? bias.data() : nullptr;
  test::expect_router_backward_matches_central_differences(logits, tokens, c, b, dgate, 1.3f, false,
                                                           rc.label);
}

INSTANTIATE_TEST_SUITE_P(
    Scorings, RouterFiniteDifferences,
    ::testing::Values(RouterCase{"softmax_top2_norm", RouterScoring::softmax_then_topk, 2, true},
                      RouterCase{"softmax_top3_raw", RouterScoring::softmax_then_topk, 3, false},
                      RouterCase{"topk_softmax_top2", RouterScoring::topk_then_softmax, 2, false},
                      RouterCase{"topk_softmax_top1", RouterScoring::topk_then_softmax, 1, false},
                      RouterCase{"sigmoid_top2_norm", RouterScoring::sigmoid_bias, 2, true},
                      RouterCase{"sigmoid_top2_raw", RouterScoring::sigmoid_bias, 2, false}),
    [](const auto& info) { return std::string(info.param.label); });

TEST(Router, BiasChangesTheChoiceButNotTheGates) {
  MoeConfig c = moe(RouterScoring::sigmoid_bias, 1, false);
  const std::vector<float> logits = {2.0f, 0.0f, -1.0f, 0.5f, 1.0f};
  const Routing plain = route(logits.data(), 1, c, nullptr);
  EXPECT_EQ(plain.expert[0], 0);
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 0.0f, 0.5f};
  const Routing biased = route(logits.data(), 1, c, bias.data());
  EXPECT_EQ(biased.expert[0], 4);
  EXPECT_FLOAT_EQ(biased.gate[0], static_cast<float>(1.0 / (1.0 + std::exp(-1.0))));
}

TEST(Router, BalancedRoutingHasAuxLossEqualToItsCoefficient) {
  // Uniform probabilities and equal counts: E * sum_e (1/E)(1/E) = 1.
  MoeConfig c = moe(RouterScoring::softmax_then_topk, 1, false);
  c.num_experts = 2;
  const std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f};  // ties: token 0 and 1 pick expert 0
  const std::vector<float> skew = {1.0f, 1.0f + 1e-6f, 1.0f + 1e-6f, 1.0f};
  const Routing r = route(skew.data(), 2, c, nullptr);
  EXPECT_EQ(r.counts, (std::vector<std::int64_t>{1, 1}));
  EXPECT_NEAR(r.aux_loss, c.aux_loss_coef, 1e-6);
  EXPECT_NEAR(r.entropy, std::log(2.0), 1e-6);
  const Routing tie = route(logits.data(), 2, c, nullptr);
  EXPECT_EQ(tie.counts, (std::vector<std::int64_t>{2, 0})) << "ties go to the lower expert id";
}

TEST(Router, BalancingBiasMovesEachExpertTowardsTheMeanLoad) {
  std::vector<float> bias = {0.5f, 0.0f, -0.25f, 0.0f};
  update_balancing_bias(bias.data(), {10, 2, 6, 6}, 0.125);
  EXPECT_EQ(bias, (std::vector<float>{0.375f, 0.125f, -0.25f, 0.0f}));
}

class MoeBlockTest : public ::testing::Test {
 protected:
  ModelConfig config(const nlohmann::json& extra = nlohmann::json::object()) {
    nlohmann::json j = {{"model_type", "qwen2_moe"},  {"vocab_size", 16},
                        {"hidden_size", 8},           {"intermediate_size", 12},
                        {"num_hidden_layers", 1},     {"num_attention_heads", 2},
                        {"num_experts", 4},           {"num_experts_per_tok", 2},
                        {"moe_intermediate_size", 6}, {"initializer_range", 0.5}};
    j.update(extra);
    return model_config_from_json(j);
  }
  Tensor input(std::int64_t tokens, const char* purpose) {
    Tensor x = cpu_.empty({tokens, 8});
    const auto v = normals(static_cast<std::size_t>(x.numel()), purpose, 1.0);
    std::copy(v.begin(), v.end(), x.data<float>());
    return x;
  }
  Arena arena_;
  CpuBackend cpu_{arena_};
};

TEST_F(MoeBlockTest, CapacityIsCeilOfFactorTimesSlotsPerExpertAndDropsAreCounted) {
  const ModelConfig c = config({{"metamorph", {{"capacity_factor", 0.5}}}});
  ParameterSet params = make_parameters(cpu_, c);
  init_parameters(params, c, 3);
  LocalExpertExchange exchange(4);
  MoeBlock block(cpu_, c.moe, moe_weights(params, c, 0, exchange), exchange);
  EXPECT_EQ(block.capacity(10), 3);  // ceil(0.5 * 10 * 2 / 4)
  block.forward(input(10, "x"));
  const MoeStats& s = block.stats();
  double expected_drops = 0;
  for (double count : s.expert_tokens) expected_drops += std::max(0.0, count - 3);
  EXPECT_EQ(s.slots, 20);
  EXPECT_EQ(static_cast<double>(s.dropped), expected_drops);
  EXPECT_GT(s.dropped, 0);
  MoeBlock dropless(cpu_, config().moe, moe_weights(params, c, 0, exchange), exchange);
  EXPECT_EQ(dropless.capacity(10), -1);
}

// Capacity over an expert-parallel group: ranks split the group's tokens; an expert keeps its
// first rows in (rank, token) order. Two ranks simulated in one process: each block sees its own
// tokens plus the counts an exchange would gather, and drops exactly what one block over all the
// tokens drops.
TEST_F(MoeBlockTest, GroupCapacityCountsDropLikeOneBlockOverAllTokens) {
  const ModelConfig c = config({{"metamorph", {{"capacity_factor", 0.75}}}});
  ParameterSet params = make_parameters(cpu_, c);
  init_parameters(params, c, 3);
  struct GroupView final : ExpertExchange {
    CapacityCounts counts;
    std::int64_t first_local_expert() const override { return 0; }
    std::int64_t num_local_experts() const override { return 4; }
    ExchangePlan plan(const std::vector<std::int64_t>& s) override { return {s, s, s}; }
    Tensor dispatch(const ExchangePlan&, const Tensor& rows) override { return rows; }
    Tensor combine(const ExchangePlan&, const Tensor& rows) override { return rows; }
    bool provides_capacity_counts() const override { return true; }
    CapacityCounts capacity_counts(const std::vector<std::int64_t>&, std::int64_t) override {
      return counts;
    }
  };
  const std::int64_t na = 6, nb = 7;
  const Tensor all = input(na + nb, "all");
  LocalExpertExchange local(4);
  MoeBlock whole(cpu_, c.moe, moe_weights(params, c, 0, local), local);
  const Tensor y_all = whole.forward(all);
  ASSERT_GT(whole.stats().dropped, 0);
  // Rank 0's routing counts are what rank 1 finds before it.
  MoeBlock counter(cpu_, c.moe, moe_weights(params, c, 0, local), local);
  counter.forward(all.slice(0, na));
  std::vector<std::int64_t> before;
  for (double count : counter.stats().expert_tokens)
    before.push_back(static_cast<std::int64_t>(count));
  std::int64_t dropped = 0;
  for (int rank = 0; rank < 2; ++rank) {
    GroupView view;
    view.counts = {rank == 0 ? std::vector<std::int64_t>(4, 0) : before, na + nb};
    MoeBlock block(cpu_, c.moe, moe_weights(params, c, 0, view), view);
    const std::int64_t begin = rank == 0 ? 0 : na, end = rank == 0 ? na : na + nb;
    const Tensor y = block.forward(all.slice(begin, end));
    dropped += block.stats().dropped;
    const Tensor want = y_all.slice(begin, end);
    for (std::int64_t i = 0; i < y.numel(); ++i)
      EXPECT_NEAR(y.data<float>()[i], want.data<float>()[i], 1e-5) << "rank " << rank;
  }
  EXPECT_EQ(dropped, whole.stats().dropped);
}

TEST_F(MoeBlockTest, BackwardIsFifoOverPendingForwards) {
  const ModelConfig c = config({{"shared_expert_intermediate_size", 4}});
  ParameterSet params = make_parameters(cpu_, c);
  init_parameters(params, c, 3);
  LocalExpertExchange exchange(4);
  MoeBlock block(cpu_, c.moe, moe_weights(params, c, 0, exchange), exchange);
  const Tensor a = input(5, "a"), b = input(7, "b"), dya = input(5, "dya"), dyb = input(7, "dyb");
  // One at a time.
  block.forward(a);
  const Tensor dxa = block.backward(dya);
  block.forward(b);
  const Tensor dxb = block.backward(dyb);
  // Both pending, then both backwards in order.
  block.forward(a);
  block.forward(b);
  const Tensor dxa2 = block.backward(dya);
  const Tensor dxb2 = block.backward(dyb);
  for (std::int64_t i = 0; i < dxa.numel(); ++i)
    EXPECT_EQ(dxa.data<float>()[i], dxa2.data<float>()[i]);
  for (std::int64_t i = 0; i < dxb.numel(); ++i)
    EXPECT_EQ(dxb.data<float>()[i], dxb2.data<float>()[i]);
  EXPECT_EQ(block.stats().forwards, 4);
}

TEST_F(MoeBlockTest, OnlyLocalExpertsAreLookedUp) {
  const ModelConfig c = config();
  ParameterSet params = make_parameters(cpu_, c);
  // An exchange that holds experts 2 and 3 only: parameters of 0 and 1 may be absent.
  struct Half final : ExpertExchange {
    std::int64_t first_local_expert() const override { return 2; }
    std::int64_t num_local_experts() const override { return 2; }
    ExchangePlan plan(const std::vector<std::int64_t>& s) override { return {s, s, s}; }
    Tensor dispatch(const ExchangePlan&, const Tensor& rows) override { return rows; }
    Tensor combine(const ExchangePlan&, const Tensor& rows) override { return rows; }
  } half;
  ParameterSet shard;
  for (const auto& p : params.all())
    if (p.name.find(".experts.0.") == std::string::npos &&
        p.name.find(".experts.1.") == std::string::npos)
      shard.add(p);
  const MoeWeights w = moe_weights(shard, c, 0, half);
  ASSERT_EQ(w.experts.size(), 2u);
  EXPECT_EQ(w.experts[0].gate_proj->name, "model.layers.0.mlp.experts.2.gate_proj.weight");
  LocalExpertExchange all(4);
  EXPECT_THROW(moe_weights(shard, c, 0, all), InputError);
}

// (MoE under tensor parallelism runs: tests/mpi/moe_layout_test.cpp, moe_ep_layout_test.cpp.)
TEST_F(MoeBlockTest, RefusesCapacityUnderExpertParallelism) {
  const ModelConfig c = config();
  ParameterSet params = make_parameters(cpu_, c);
  const ModelConfig capped = config({{"metamorph", {{"capacity_factor", 1.0}}}});
  struct Half final : ExpertExchange {
    std::int64_t first_local_expert() const override { return 0; }
    std::int64_t num_local_experts() const override { return 2; }
    ExchangePlan plan(const std::vector<std::int64_t>& s) override { return {s, s, s}; }
    Tensor dispatch(const ExchangePlan&, const Tensor& rows) override { return rows; }
    Tensor combine(const ExchangePlan&, const Tensor& rows) override { return rows; }
  } half;
  EXPECT_THROW(MoeBlock(cpu_, capped.moe, moe_weights(params, capped, 0, half), half), InputError);
}

TEST_F(MoeBlockTest, RecomputeGivesTheSameGradientsAndCountsEachForwardOnce) {
  const ModelConfig c = config({{"num_hidden_layers", 2},
                                {"shared_expert_intermediate_size", 4},
                                {"router_z_loss_coef", 0.01},
                                {"metamorph", {{"capacity_factor", 1.0}}}});
  Tensor tokens = cpu_.empty({2, 6}, DType::i32), targets = cpu_.empty({2, 6}, DType::i32);
  for (int i = 0; i < 12; ++i) {
    tokens.data<std::int32_t>()[i] = (i * 5 + 1) % 16;
    targets.data<std::int32_t>()[i] = (i * 3 + 2) % 16;
  }
  std::vector<std::vector<float>> grads;
  for (bool recompute : {false, true}) {
    ParameterSet params = make_parameters(cpu_, c);
    init_parameters(params, c, 4);
    TransformerOptions o;
    o.recompute = recompute;
    Transformer model(cpu_, c, params, o);
    model.forward_backward(tokens, targets, 1.0f / 12);
    for (auto& [layer, block] : model.moe_blocks()) EXPECT_EQ(block->stats().forwards, 1);
    grads.emplace_back();
    for (const auto& p : params.all())
      grads.back().insert(grads.back().end(), p.grad.data<float>(),
                          p.grad.data<float>() + p.grad.numel());
  }
  EXPECT_EQ(grads[0], grads[1]);
}

// The GPU's order (an exchange whose combine runs beside the compute: the shared expert is
// queued between start_combine and finish) on the CPU: the same outputs and gradients, bit for
// bit, as the in-order block, with and without the shared expert's gate. The stand-in exchange
// moves its rows only in finish, so a block that read them earlier would see garbage.
TEST_F(MoeBlockTest, SharedExpertQueuedWhileTheCombineMovesGivesTheSameResults) {
  struct Background final : ExpertExchange {
    explicit Background(Backend& b, Arena& a) : backend(b), arena(a) {}
    std::int64_t first_local_expert() const override { return 0; }
    std::int64_t num_local_experts() const override { return 4; }
    ExchangePlan plan(const std::vector<std::int64_t>& s) override { return {s, s, s}; }
    Tensor dispatch(const ExchangePlan&, const Tensor& rows) override { return rows; }
    Tensor combine(const ExchangePlan&, const Tensor& rows) override { return rows; }
    bool combines_in_background() const override { return true; }
    PendingRows start_combine(const ExchangePlan&, const Tensor& rows) override {
      Tensor out = backend.empty(rows.shape(), rows.dtype());
      backend.fill(out, std::nanf(""));
      bytes_at_start.push_back(arena.bytes_in_use());
      return {[this, rows, out]() mutable {
        bytes_at_finish.push_back(arena.bytes_in_use());
        shared_grad_at_finish.push_back(backend.sum_squares(*shared_grad));
        backend.copy(rows, out);
        return out;
      }};
    }
    Backend& backend;
    Arena& arena;
    const Tensor* shared_grad = nullptr;  // the shared expert's down_proj gradient
    std::vector<std::size_t> bytes_at_start, bytes_at_finish;
    std::vector<double> shared_grad_at_finish;
  };
  for (bool gated : {false, true}) {
    const ModelConfig c = config(
        {{"shared_expert_intermediate_size", 4}, {"metamorph", {{"shared_expert_gate", gated}}}});
    std::vector<std::vector<float>> results;
    for (bool background : {false, true}) {
      ParameterSet params = make_parameters(cpu_, c);
      init_parameters(params, c, 5);
      LocalExpertExchange local(4);
      Background deferred(cpu_, arena_);
      deferred.shared_grad =
          &params.find("model.layers.0.mlp.shared_expert.down_proj.weight")->grad;
      ExpertExchange& exchange = background ? static_cast<ExpertExchange&>(deferred) : local;
      MoeBlock block(cpu_, c.moe, moe_weights(params, c, 0, exchange), exchange);
      const Tensor y = block.forward(input(7, "x"));
      const Tensor dx = block.backward(input(7, "dy"));
      results.emplace_back(y.data<float>(), y.data<float>() + y.numel());
      results.back().insert(results.back().end(), dx.data<float>(), dx.data<float>() + dx.numel());
      for (const auto& p : params.all())
        results.back().insert(results.back().end(), p.grad.data<float>(),
                              p.grad.data<float>() + p.grad.numel());
      if (background) {
        // Forward and backward each started one combine and queued the shared expert's work
        // before finishing it: its forward's tensors, its backward's weight gradients.
        ASSERT_EQ(deferred.bytes_at_start.size(), 2u);
        ASSERT_EQ(deferred.shared_grad_at_finish.size(), 2u);
        EXPECT_GT(deferred.bytes_at_finish[0], deferred.bytes_at_start[0]);
        EXPECT_EQ(deferred.shared_grad_at_finish[0], 0.0);
        EXPECT_GT(deferred.shared_grad_at_finish[1], 0.0);
      }
    }
    EXPECT_EQ(results[0], results[1]) << (gated ? "gated" : "ungated");
  }
}

// Upcycling's premise (docs/moe.md): experts that are copies of one dense FFN, with gates that
// sum to one, give exactly the dense output whatever the router says.
// Whole experts over a TP group of two (TpGroupExpertExchange): each rank's block runs its two
// experts on the same tokens; the two partial outputs, input gradients and router gradients
// (each rank adding half of the aux/z-loss gradient, as DecoderLayer does under TP) sum to the
// whole block's, and each rank's expert gradients are the whole block's for those experts. With
// and without a capacity factor (the group's tokens are one rank's: the same drops).
TEST_F(MoeBlockTest, ExpertsOverATpGroupSumToTheWholeBlock) {
  // max |got - want| / max |want|
  auto relative_difference = [](const std::vector<float>& got, const std::vector<float>& want) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::abs(got.at(i) - want[i])));
      scale = std::max(scale, static_cast<double>(std::abs(want[i])));
    }
    return diff / scale;
  };
  for (double capacity : {0.0, 1.0}) {
    nlohmann::json extra = {{"router_aux_loss_coef", 0.1}, {"router_z_loss_coef", 0.01}};
    if (capacity > 0) extra["metamorph"] = {{"capacity_factor", capacity}};
    const ModelConfig c = config(extra);
    const Tensor x = input(10, "over-tp x"), dy = input(10, "over-tp dy");
    auto grad_of = [](ParameterSet& params, const std::string& name) {
      const Tensor& g = params.find(name)->grad;
      return std::vector<float>(g.data<float>(), g.data<float>() + g.numel());
    };
    ParameterSet whole_params = make_parameters(cpu_, c);
    init_parameters(whole_params, c, 9);
    LocalExpertExchange local(4);
    MoeBlock whole(cpu_, c.moe, moe_weights(whole_params, c, 0, local), local);
    const Tensor y = whole.forward(x);
    const Tensor dx = whole.backward(dy);
    std::vector<float> y_sum(static_cast<std::size_t>(y.numel()), 0.0f), dx_sum = y_sum;
    std::vector<float> router_sum(grad_of(whole_params, "model.layers.0.mlp.gate.weight").size());
    for (int rank = 0; rank < 2; ++rank) {
      ParameterSet params = make_parameters(cpu_, c);
      init_parameters(params, c, 9);
      TpGroupExpertExchange exchange(4, rank, 2, cpu_);
      MoeBlock block(cpu_, c.moe, moe_weights(params, c, 0, exchange), exchange);
      const Tensor part = block.forward(x);
      const Tensor dpart = block.backward(dy, 0.5f);
      for (std::int64_t i = 0; i < part.numel(); ++i) {
        y_sum[static_cast<std::size_t>(i)] += part.data<float>()[i];
        dx_sum[static_cast<std::size_t>(i)] += dpart.data<float>()[i];
      }
      const auto router = grad_of(params, "model.layers.0.mlp.gate.weight");
      for (std::size_t i = 0; i < router.size(); ++i) router_sum[i] += router[i];
      EXPECT_EQ(block.stats().expert_tokens, whole.stats().expert_tokens);
      EXPECT_EQ(block.stats().dropped, whole.stats().dropped);
      for (std::int64_t e = 2 * rank; e < 2 * rank + 2; ++e)
        for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
          const std::string name = expert_prefix(0, e) + proj + ".weight";
          EXPECT_EQ(grad_of(params, name), grad_of(whole_params, name)) << name;
        }
    }
    if (capacity > 0) {
      EXPECT_GT(whole.stats().dropped, 0);
    }
    const std::vector<float> y_whole(y.data<float>(), y.data<float>() + y.numel());
    const std::vector<float> dx_whole(dx.data<float>(), dx.data<float>() + dx.numel());
    EXPECT_LT(relative_difference(y_sum, y_whole), 1e-6) << "capacity " << capacity;
    EXPECT_LT(relative_difference(dx_sum, dx_whole), 1e-6) << "capacity " << capacity;
    EXPECT_LT(
        relative_difference(router_sum, grad_of(whole_params, "model.layers.0.mlp.gate.weight")),
        1e-6)
        << "capacity " << capacity;
  }
}

TEST_F(MoeBlockTest, IdenticalExpertsWithNormalisedGatesEqualTheDenseMlp) {
  for (const char* type : {"qwen2_moe", "mixtral"}) {
    const ModelConfig c = config({{"model_type", type}, {"norm_topk_prob", true}});
    ParameterSet params = make_parameters(cpu_, c);
    init_parameters(params, c, 6);
    const std::string e0 = expert_prefix(0, 0);
    for (std::int64_t e = 1; e < 4; ++e)
      for (const char* proj : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"})
        cpu_.copy(params.find(e0 + proj)->value, params.find(expert_prefix(0, e) + proj)->value);
    LocalExpertExchange exchange(4);
    MoeBlock block(cpu_, c.moe, moe_weights(params, c, 0, exchange), exchange);
    SwiGluMlp dense(cpu_, {params.find(e0 + "gate_proj.weight"), params.find(e0 + "up_proj.weight"),
                           params.find(e0 + "down_proj.weight")});
    const Tensor x = input(9, "x");
    const Tensor y = block.forward(x), want = dense.forward(x);
    for (std::int64_t i = 0; i < y.numel(); ++i)
      EXPECT_NEAR(y.data<float>()[i], want.data<float>()[i],
                  1e-6 * (1 + std::abs(want.data<float>()[i])))
          << type << " element " << i;
  }
}

TEST(HfNames, MixtralAndDeepSeekNamesMapBothWays) {
  const std::vector<std::pair<std::string, std::string>> mixtral = {
      {"model.layers.3.mlp.gate.weight", "model.layers.3.block_sparse_moe.gate.weight"},
      {"model.layers.3.mlp.experts.7.gate_proj.weight",
       "model.layers.3.block_sparse_moe.experts.7.w1.weight"},
      {"model.layers.3.mlp.experts.7.up_proj.weight",
       "model.layers.3.block_sparse_moe.experts.7.w3.weight"},
      {"model.layers.3.mlp.experts.7.down_proj.weight",
       "model.layers.3.block_sparse_moe.experts.7.w2.weight"},
      {"model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.gate_proj.weight"},
      {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"}};
  for (const auto& [canonical, hf] : mixtral) {
    EXPECT_EQ(hf_parameter_name(canonical, "mixtral"), hf);
    EXPECT_EQ(canonical_parameter_name(hf, "mixtral"), canonical);
    EXPECT_EQ(hf_parameter_name(canonical, "qwen2_moe"), canonical);
  }
  EXPECT_EQ(hf_parameter_name("model.layers.1.mlp.shared_expert.up_proj.weight", "deepseek_v3"),
            "model.layers.1.mlp.shared_experts.up_proj.weight");
  EXPECT_EQ(
      canonical_parameter_name("model.layers.1.mlp.shared_experts.up_proj.weight", "deepseek_v3"),
      "model.layers.1.mlp.shared_expert.up_proj.weight");
}

}  // namespace
}  // namespace metamorph

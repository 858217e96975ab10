// EpExpertExchange against the local computation: every rank routes rows to global experts, the
// exchange moves them to the experts' ranks grouped by local expert and source rank, and combine
// brings them back in the original order. Includes experts that receive nothing and a rank that
// sends nothing.
#include <gtest/gtest.h>

#include "parallel/ep_expert_exchange.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "tests/mpi/mpi_fixture.hpp"

namespace metamorph {
namespace {

constexpr std::int64_t kWidth = 3;

// Rows rank `source` routes to global expert e: varied, zero for some experts, and zero for
// every expert on rank `silent` (-1: every rank sends).
int silent = -1;
std::int64_t route_count(int source, int /*ranks*/, std::int64_t e) {
  if (source == silent) return 0;
  return (source * 7 + e * 3) % 5 == 0 ? 0 : (source + 2 * e) % 4 + 1;
}

// Row i of (source, expert) holds (source, expert, i) so every row is traceable.
void fill_row(float* row, int source, std::int64_t expert, std::int64_t i) {
  row[0] = static_cast<float>(source);
  row[1] = static_cast<float>(expert);
  row[2] = static_cast<float>(i);
}

class EpExchange : public test::MpiTest {
 protected:
  // The exchange allocates and moves rows through a backend: the CPU one over the test's arena.
  CpuBackend cpu{arena};

  void check(Communicator& ep, std::int64_t experts) {
    const int p = ep.size(), me = ep.rank();
    EpExpertExchange exchange(ep, experts, cpu);
    const std::int64_t local = experts / p;
    EXPECT_EQ(exchange.num_local_experts(), local);
    EXPECT_EQ(exchange.first_local_expert(), local * me);

    std::vector<std::int64_t> send(static_cast<std::size_t>(experts));
    std::int64_t total = 0;
    for (std::int64_t e = 0; e < experts; ++e) total += send[e] = route_count(me, p, e);
    Tensor rows = Tensor::empty({total, kWidth}, DType::f32, arena);
    std::int64_t at = 0;
    for (std::int64_t e = 0; e < experts; ++e)
      for (std::int64_t i = 0; i < send[e]; ++i)
        fill_row(rows.data<float>() + kWidth * at++, me, e, i);

    const ExchangePlan plan = exchange.plan(send);
    ASSERT_EQ(plan.local_counts.size(), static_cast<std::size_t>(local));
    ASSERT_EQ(plan.peer_counts.size(), static_cast<std::size_t>(p * local));
    for (int j = 0; j < p; ++j)
      for (std::int64_t e = 0; e < local; ++e)
        EXPECT_EQ(plan.peer_counts[j * local + e], route_count(j, p, me * local + e));

    // Received rows: by local expert, then by source rank, each source's rows in order.
    Tensor got = exchange.dispatch(plan, rows);
    std::int64_t expected_rows = 0;
    for (std::int64_t e = 0; e < local; ++e) {
      std::int64_t per_expert = 0;
      for (int j = 0; j < p; ++j) per_expert += route_count(j, p, me * local + e);
      EXPECT_EQ(plan.local_counts[e], per_expert);
      expected_rows += per_expert;
    }
    ASSERT_EQ(got.dim(0), expected_rows);
    std::int64_t r = 0;
    for (std::int64_t e = 0; e < local; ++e)
      for (int j = 0; j < p; ++j)
        for (std::int64_t i = 0; i < route_count(j, p, me * local + e); ++i, ++r) {
          float want[kWidth];
          fill_row(want, j, me * local + e, i);
          for (std::int64_t c = 0; c < kWidth; ++c)
            EXPECT_EQ(got.data<float>()[r * kWidth + c], want[c]) << "row " << r;
        }

    // An "expert" that scales its rows by (global expert + 1); combine must return the local
    // computation's result in the original order.
    for (std::int64_t row = 0, e = 0; e < local; ++e)
      for (std::int64_t i = 0; i < plan.local_counts[e]; ++i, ++row)
        for (std::int64_t c = 0; c < kWidth; ++c)
          got.data<float>()[row * kWidth + c] *= static_cast<float>(me * local + e + 1);
    const Tensor back = exchange.combine(plan, got);
    ASSERT_EQ(back.shape(), rows.shape());
    for (std::int64_t row = 0, e = 0; e < experts; ++e)
      for (std::int64_t i = 0; i < send[e]; ++i, ++row)
        for (std::int64_t c = 0; c < kWidth; ++c)
          EXPECT_EQ(back.data<float>()[row * kWidth + c],
                    rows.data<float>()[row * kWidth + c] * static_cast<float>(e + 1));

    // all-to-all-v counts exactly the rows that left the rank (twice), all-to-all the counts.
    std::int64_t leaving = 0, arriving = 0;
    for (std::int64_t e = 0; e < experts; ++e)
      if (e / local != me) leaving += send[e];
    for (int j = 0; j < p; ++j)
      if (j != me)
        for (std::int64_t e = 0; e < local; ++e) arriving += plan.peer_counts[j * local + e];
    const auto row_bytes = static_cast<std::uint64_t>(kWidth * 4);
    EXPECT_EQ(ep.bytes_sent(CommOp::all_to_all_v),
              static_cast<std::uint64_t>(leaving + arriving) * row_bytes);

    // The started combine gives the same rows; on the CPU they have arrived when it returns.
    EXPECT_FALSE(exchange.combines_in_background());
    const Tensor again = exchange.start_combine(plan, got).finish();
    ASSERT_EQ(again.shape(), back.shape());
    for (std::int64_t i = 0; i < back.numel(); ++i)
      EXPECT_EQ(again.data<float>()[i], back.data<float>()[i]) << "element " << i;
  }
};

TEST_F(EpExchange, OneExpertPerRank) {
  silent = -1;
  check(*world, world->size());
}

TEST_F(EpExchange, SeveralExpertsPerRank) {
  silent = -1;
  check(*world, 3 * world->size());
}

TEST_F(EpExchange, ARankSendsNothing) {
  silent = world->size() - 1;
  check(*world, 2 * world->size());
  silent = -1;
}

TEST_F(EpExchange, SubgroupsOfTwo) {
  if (world->size() < 4) GTEST_SKIP() << "needs 4 ranks";
  const int base = world->rank() / 2 * 2;
  auto pair = world->subgroup({base, base + 1}, "ep");
  check(*pair, 4);
}

TEST_F(EpExchange, NothingRoutedAnywhere) {
  EpExpertExchange exchange(*world, 2 * world->size(), cpu);
  const std::vector<std::int64_t> none(static_cast<std::size_t>(2 * world->size()), 0);
  const ExchangePlan plan = exchange.plan(none);
  const Tensor rows = Tensor::empty({0, kWidth}, DType::f32, arena);
  const Tensor got = exchange.dispatch(plan, rows);
  EXPECT_EQ(got.dim(0), 0);
  EXPECT_EQ(got.dim(1), kWidth);
  EXPECT_EQ(exchange.combine(plan, got).dim(0), 0);
}

TEST_F(EpExchange, ExpertsMustDivide) {
  if (world->size() < 2) GTEST_SKIP();
  EXPECT_THROW(EpExpertExchange(*world, world->size() + 1, cpu), InputError);
}

// Expert-TP across replicas (4 ranks: expert-TP pairs {0,1} {2,3}, EP pairs {0,2} {1,3}): each
// shard sees the rows of both members, and combine sums the members' partial outputs.
TEST_F(EpExchange, ExpertTensorParallelGathersAndSums) {
  if (world->size() != 4) GTEST_SKIP() << "needs 4 ranks";
  silent = 2;  // world rank 2 routes nothing
  const int me = world->rank(), member = me % 2, ep_rank = me / 2;
  auto etp = world->subgroup({me / 2 * 2, me / 2 * 2 + 1}, "expert_tp");
  auto ep = world->subgroup({me % 2, me % 2 + 2}, "ep");
  const std::int64_t experts = 4, local = 2;
  EpExpertExchange exchange(*ep, experts, cpu, etp.get());
  std::vector<std::int64_t> send(experts);
  std::int64_t total = 0;
  for (std::int64_t e = 0; e < experts; ++e) total += send[e] = route_count(me, 4, e);
  Tensor rows = Tensor::empty({total, kWidth}, DType::f32, arena);
  for (std::int64_t at = 0, e = 0; e < experts; ++e)
    for (std::int64_t i = 0; i < send[e]; ++i)
      fill_row(rows.data<float>() + kWidth * at++, me, e, i);
  const ExchangePlan plan = exchange.plan(send);
  Tensor got = exchange.dispatch(plan, rows);
  // [local expert][expert-TP member][EP source rank], each source's rows in order.
  std::int64_t r = 0;
  for (std::int64_t e = 0; e < local; ++e) {
    const std::int64_t global = ep_rank * local + e;
    std::int64_t per_expert = 0;
    for (int m = 0; m < 2; ++m)
      for (int j = 0; j < 2; ++j)
        for (std::int64_t i = 0; i < route_count(m + 2 * j, 4, global); ++i, ++r, ++per_expert) {
          float want[kWidth];
          fill_row(want, m + 2 * j, global, i);
          ASSERT_LT(r, got.dim(0));
          for (std::int64_t c = 0; c < kWidth; ++c)
            EXPECT_EQ(got.data<float>()[r * kWidth + c], want[c]) << "row " << r << " on " << me;
        }
    EXPECT_EQ(plan.local_counts[e], per_expert);
  }
  EXPECT_EQ(r, got.dim(0));
  // Member 0 contributes a quarter, member 1 three quarters of (expert + 1) x row.
  for (std::int64_t row = 0, e = 0; e < local; ++e)
    for (std::int64_t i = 0; i < plan.local_counts[e]; ++i, ++row)
      for (std::int64_t c = 0; c < kWidth; ++c)
        got.data<float>()[row * kWidth + c] *=
            static_cast<float>(ep_rank * local + e + 1) * (member == 0 ? 0.25f : 0.75f);
  const Tensor back = exchange.combine(plan, got);
  ASSERT_EQ(back.shape(), rows.shape());
  for (std::int64_t row = 0, e = 0; e < experts; ++e)
    for (std::int64_t i = 0; i < send[e]; ++i, ++row)
      for (std::int64_t c = 0; c < kWidth; ++c)
        EXPECT_EQ(back.data<float>()[row * kWidth + c],
                  rows.data<float>()[row * kWidth + c] * static_cast<float>(e + 1));
  silent = -1;
}

// Capacity needs, per expert, the rows the EP ranks before this one route there, and the group's
// tokens.
TEST_F(EpExchange, CapacityCountsArePrefixSumsOverTheGroup) {
  silent = -1;
  const std::int64_t experts = 2 * world->size();
  EpExpertExchange exchange(*world, experts, cpu);
  EXPECT_TRUE(exchange.provides_capacity_counts());
  std::vector<std::int64_t> counts(static_cast<std::size_t>(experts));
  for (std::int64_t e = 0; e < experts; ++e) counts[e] = route_count(world->rank(), 0, e);
  const CapacityCounts got = exchange.capacity_counts(counts, 10 + world->rank());
  std::int64_t tokens = 0;
  for (int r = 0; r < world->size(); ++r) tokens += 10 + r;
  EXPECT_EQ(got.tokens, tokens);
  for (std::int64_t e = 0; e < experts; ++e) {
    std::int64_t before = 0;
    for (int r = 0; r < world->rank(); ++r) before += route_count(r, 0, e);
    EXPECT_EQ(got.rows_before[e], before) << "expert " << e;
  }
}

}  // namespace
}  // namespace metamorph

// Unit maps and depth plans: the index bookkeeping under every growth.
#include <gtest/gtest.h>

#include "runtime/transforms/depth_plan.hpp"
#include "runtime/transforms/unit_map.hpp"

namespace metamorph {
namespace {

TEST(UnitMap, CircularCopyCountsAndFreshness) {
  const UnitMap m = circular_map(4, 10);
  EXPECT_EQ(m.source, (std::vector<std::int64_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1}));
  EXPECT_EQ(m.copies, (std::vector<std::int64_t>{3, 3, 2, 2, 3, 3, 2, 2, 3, 3}));
  EXPECT_FALSE(m.fresh[3]);
  EXPECT_TRUE(m.fresh[4]);
  EXPECT_FALSE(m.uniform());
  EXPECT_TRUE(circular_map(4, 12).uniform());
}

// Every new query head must read a KV head that copies the KV head of its source head.
TEST(UnitMap, GroupedQueryHeadsStayWithTheirKvHead) {
  struct Heads {
    std::int64_t a, kv, a2, kv2;
  };
  for (const Heads h : {Heads{4, 2, 8, 4}, Heads{4, 2, 8, 2}, Heads{4, 1, 12, 1},
                        Heads{6, 3, 12, 3}, Heads{6, 3, 10, 5}, Heads{4, 4, 8, 8}}) {
    const UnitMap q = grouped_query_map(h.a, h.kv, h.a2, h.kv2);
    const UnitMap kv = circular_map(h.kv, h.kv2);
    for (std::int64_t j = 0; j < h.a2; ++j)
      EXPECT_EQ(kv.source[static_cast<std::size_t>(j / (h.a2 / h.kv2))],
                q.source[static_cast<std::size_t>(j)] / (h.a / h.kv))
          << h.a << "/" << h.kv << " -> " << h.a2 << "/" << h.kv2 << ", head " << j;
  }
  // Same group size: the circular map the issue asks for.
  EXPECT_EQ(grouped_query_map(4, 2, 8, 4).source, circular_map(4, 8).source);
}

std::vector<std::int64_t> sources(const std::vector<GrownLayer>& plan) {
  std::vector<std::int64_t> out;
  for (const auto& l : plan) out.push_back(l.is_new ? -1 - l.source : l.source);
  return out;  // new layers as -1 - source
}

TEST(DepthPlan, InterleaveStackAndPositions) {
  GrowOptions o;
  EXPECT_EQ(sources(plan_depth(3, 6, o)), (std::vector<std::int64_t>{0, -1, 1, -2, 2, -3}));
  EXPECT_EQ(sources(plan_depth(3, 4, o)), (std::vector<std::int64_t>{0, 1, 2, -3}));
  EXPECT_EQ(sources(plan_depth(2, 7, o)), (std::vector<std::int64_t>{0, -1, -1, 1, -2, -2, -2}));
  EXPECT_EQ(sources(plan_depth(2, 2, o)), (std::vector<std::int64_t>{0, 1}));
  o.placement = DepthPlacement::stack;
  EXPECT_EQ(sources(plan_depth(2, 5, o)), (std::vector<std::int64_t>{0, 1, -1, -2, -1}));
  o.new_layer_positions = {0, 3};
  EXPECT_EQ(sources(plan_depth(2, 4, o)), (std::vector<std::int64_t>{-1, 0, 1, -2}));
}

}  // namespace
}  // namespace metamorph

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>

#include "parallel/layout.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {
namespace {

using Groups = std::vector<std::vector<int>>;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

// Megatron-Core order, written out by hand: rank = tp + TP * (dp + DP * pp).
TEST(Topology, Tp2Pp2Dp2MatchesHandWrittenTable) {
  const Topology topo(Layout{.tp = 2, .pp = 2, .dp = 2}, 8);
  const int table[8][3] = {{0, 0, 0}, {1, 0, 0}, {0, 1, 0}, {1, 1, 0},
                           {0, 0, 1}, {1, 0, 1}, {0, 1, 1}, {1, 1, 1}};  // tp, dp, pp
  for (int r = 0; r < 8; ++r) {
    const Coordinates c = topo.coordinates(r);
    EXPECT_EQ(c.tp, table[r][0]) << r;
    EXPECT_EQ(c.dp, table[r][1]) << r;
    EXPECT_EQ(c.pp, table[r][2]) << r;
    EXPECT_EQ(topo.rank_of(c.tp, c.dp, c.pp), r);
  }
  EXPECT_EQ(topo.all_groups(GroupKind::tp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::dp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::pp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::model_parallel), (Groups{{0, 1, 4, 5}, {2, 3, 6, 7}}));
  EXPECT_EQ(topo.group(GroupKind::embedding, 5), (std::vector<int>{1, 5}));
  // Without EP the expert groups are the dense ones.
  EXPECT_EQ(topo.all_groups(GroupKind::ep), (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::expert_dp), topo.all_groups(GroupKind::dp));
  EXPECT_EQ(topo.all_groups(GroupKind::expert_tp), topo.all_groups(GroupKind::tp));
}

TEST(Topology, Tp2Dp4Ep2MatchesHandWrittenTable) {
  const Topology topo(Layout{.tp = 2, .pp = 1, .dp = 4, .ep = 2}, 8);
  const int table[8][5] = {// tp, dp, ep, edp, etp
                           {0, 0, 0, 0, 0}, {1, 0, 0, 0, 1}, {0, 1, 1, 0, 0}, {1, 1, 1, 0, 1},
                           {0, 2, 0, 1, 0}, {1, 2, 0, 1, 1}, {0, 3, 1, 1, 0}, {1, 3, 1, 1, 1}};
  for (int r = 0; r < 8; ++r) {
    const Coordinates c = topo.coordinates(r);
    EXPECT_EQ(c.tp, table[r][0]) << r;
    EXPECT_EQ(c.dp, table[r][1]) << r;
    EXPECT_EQ(c.ep, table[r][2]) << r;
    EXPECT_EQ(c.edp, table[r][3]) << r;
    EXPECT_EQ(c.etp, table[r][4]) << r;
    EXPECT_EQ(c.pp, 0);
  }
  EXPECT_EQ(topo.all_groups(GroupKind::tp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::dp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  // EP groups are consecutive DP ranks; expert-DP joins equal ep ranks of one DP group.
  EXPECT_EQ(topo.all_groups(GroupKind::ep), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::expert_dp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::expert_tp), topo.all_groups(GroupKind::tp));
  EXPECT_EQ(topo.group(GroupKind::embedding, 3), (std::vector<int>{3}));
}

TEST(Topology, ExpertTensorParallelSizeOfOneSpreadsExpertsOverTpRanks) {
  const Topology topo(Layout{.tp = 2, .pp = 1, .dp = 4, .ep = 2, .etp = 1}, 8);
  EXPECT_EQ(topo.all_groups(GroupKind::expert_tp),
            (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::ep), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(topo.all_groups(GroupKind::expert_dp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
}

// Whole experts over the TP group (train --tp T --etp 1 --ep T): for every rank the EP group is
// its TP group, its EP rank its TP rank, and its expert-DP group its DP group.
TEST(Topology, ExpertsOverTheTpGroupUseTheTpAndDpGroups) {
  for (const Layout& layout : {Layout{.tp = 2, .pp = 2, .dp = 3, .ep = 2, .etp = 1},
                               Layout{.tp = 4, .pp = 1, .dp = 2, .ep = 4, .etp = 1}}) {
    ASSERT_TRUE(layout.experts_over_tp());
    const Topology topo(layout, layout.world_size());
    for (int r = 0; r < layout.world_size(); ++r) {
      const Coordinates c = topo.coordinates(r);
      EXPECT_EQ(c.ep, c.tp) << layout.describe() << " rank " << r;
      EXPECT_EQ(c.edp, c.dp) << layout.describe() << " rank " << r;
      EXPECT_EQ(topo.group(GroupKind::ep, r), topo.group(GroupKind::tp, r)) << r;
      EXPECT_EQ(topo.group(GroupKind::expert_dp, r), topo.group(GroupKind::dp, r)) << r;
      EXPECT_EQ(topo.group(GroupKind::expert_tp, r), std::vector<int>{r});
    }
  }
  EXPECT_FALSE((Layout{.tp = 2, .dp = 2, .ep = 2}.experts_over_tp()));  // etp = tp: EP in DP
  EXPECT_FALSE((Layout{.tp = 2, .dp = 2, .ep = 4, .etp = 1}.experts_over_tp()));
}

TEST(Topology, GroupsPartitionTheWorldAndListTheirOwnRank) {
  const Topology topo(Layout{.tp = 2, .pp = 3, .dp = 4, .ep = 2}, 24);
  for (GroupKind kind : kAllGroupKinds) {
    if (kind == GroupKind::embedding) continue;
    std::vector<int> hits(24, 0);
    for (const auto& g : topo.all_groups(kind))
      for (int m : g) ++hits[static_cast<std::size_t>(m)];
    for (int r = 0; r < 24; ++r) {
      EXPECT_EQ(hits[static_cast<std::size_t>(r)], 1) << group_name(kind) << " rank " << r;
      const auto g = topo.group(kind, r);
      EXPECT_NE(std::find(g.begin(), g.end(), r), g.end()) << group_name(kind);
      EXPECT_EQ(topo.group(kind, g.front()), g) << group_name(kind);
    }
  }
  EXPECT_EQ(topo.group(GroupKind::tp, 13).size(), 2u);
  EXPECT_EQ(topo.group(GroupKind::pp, 13).size(), 3u);
  EXPECT_EQ(topo.group(GroupKind::dp, 13).size(), 4u);
  EXPECT_EQ(topo.group(GroupKind::expert_dp, 13).size(), 2u);
  EXPECT_EQ(topo.group(GroupKind::model_parallel, 13).size(), 6u);
}

TEST(LayoutValidation, ProductMismatchNamesBothNumbersAndWhatFits) {
  const std::string e = error_of([] { Topology(Layout{.tp = 2, .pp = 2, .dp = 3}, 8); });
  EXPECT_NE(e.find("= 12 ranks"), std::string::npos) << e;
  EXPECT_NE(e.find("world has 8"), std::string::npos) << e;
  EXPECT_NE(e.find("dp would be 2"), std::string::npos) << e;
  EXPECT_NE(e.find("tp 1 pp 1 dp 8"), std::string::npos) << e;
  EXPECT_NE(e.find("tp 8 pp 1 dp 1"), std::string::npos) << e;
  EXPECT_EQ(layouts_for_world(8).size(), 10u);
}

TEST(LayoutValidation, EpMustDivideDp) {
  const std::string e = error_of([] { Topology(Layout{.tp = 2, .pp = 1, .dp = 3, .ep = 2}, 6); });
  EXPECT_NE(e.find("--ep 2 must divide --dp 3"), std::string::npos) << e;
  EXPECT_NE(e.find("1, 3"), std::string::npos) << e;
  EXPECT_EQ(error_of([] { Topology(Layout{.tp = 1, .pp = 1, .dp = 4, .ep = 4}, 4); }), "");
  EXPECT_NE(error_of([] { Topology(Layout{.tp = 0, .pp = 1, .dp = 4}, 4); }).find("--tp"),
            std::string::npos);
}

TEST(LayoutValidation, ModelDivisibilityNamesTheNumberAndValidSizes) {
  const Layout tp3{.tp = 3, .pp = 1, .dp = 1};
  std::string e = error_of([&] { validate_against_model(tp3, 32, 8, 5632, 32000, 22, 0); });
  EXPECT_NE(e.find("num_attention_heads 32"), std::string::npos) << e;
  EXPECT_NE(e.find(": 1, 2, 4, 8"), std::string::npos) << e;
  const Layout tp16{.tp = 16, .pp = 1, .dp = 1};
  e = error_of([&] { validate_against_model(tp16, 32, 8, 5632, 32000, 22, 0); });
  EXPECT_NE(e.find("num_key_value_heads 8"), std::string::npos) << e;
  // A vocabulary that TP does not divide splits unevenly (block diffusion's [MASK] row).
  EXPECT_EQ(error_of([&] { validate_against_model(Layout{.tp = 2}, 32, 8, 5632, 32001, 22, 0); }),
            "");
  e = error_of([&] { validate_against_model(Layout{.tp = 4}, 32, 8, 5632, 9, 22, 0); });
  EXPECT_NE(e.find("vocab_size 9"), std::string::npos) << e;
  e = error_of([&] { validate_against_model(Layout{.pp = 4}, 32, 8, 5632, 32000, 3, 0); });
  EXPECT_NE(e.find("--pp 4 exceeds num_hidden_layers 3"), std::string::npos) << e;
  e = error_of([&] { validate_against_model(Layout{.dp = 6, .ep = 3}, 32, 8, 512, 32000, 4, 8); });
  EXPECT_NE(e.find("number of experts 8; valid --ep: 1, 2, 4, 8"), std::string::npos) << e;
  e = error_of([&] { validate_against_model(Layout{.dp = 2, .ep = 2}, 32, 8, 512, 32000, 4, 0); });
  EXPECT_NE(e.find("dense"), std::string::npos) << e;
  e = error_of([&] {
    validate_against_model(Layout{.tp = 4, .dp = 2, .ep = 2}, 32, 8, 512, 32000, 4, 8, 6);
  });
  EXPECT_NE(e.find("expert FFN width 6"), std::string::npos) << e;
  EXPECT_EQ(error_of([&] {
              validate_against_model(Layout{.tp = 8, .pp = 2, .dp = 4, .ep = 4}, 32, 8, 5632, 32000,
                                     22, 8);
            }),
            "");
}

}  // namespace
}  // namespace metamorph

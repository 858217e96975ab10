// The row groups of the grouped GEMMs: empty groups skipped with the right first rows, a cover
// that misses or exceeds the operands' rows refused, and gradients that share memory found (the
// CUDA backend refuses them: its groups run at the same time).
#include "runtime/core/row_groups.hpp"

#include <gtest/gtest.h>

#include <stdexcept>

namespace metamorph {
namespace {

TEST(RowGroups, EmptyGroupsAreSkippedAndEachGroupKnowsItsFirstRow) {
  const std::vector<RowGroup> groups = non_empty_row_groups({0, 3, 0, 0, 5, 1, 0}, 9, 9, "test");
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].index, 1u);
  EXPECT_EQ(groups[0].first, 0);
  EXPECT_EQ(groups[0].count, 3);
  EXPECT_EQ(groups[1].index, 4u);
  EXPECT_EQ(groups[1].first, 3);
  EXPECT_EQ(groups[1].count, 5);
  EXPECT_EQ(groups[2].index, 5u);
  EXPECT_EQ(groups[2].first, 8);
  EXPECT_EQ(groups[2].count, 1);
  EXPECT_TRUE(non_empty_row_groups({0, 0}, 0, 0, "test").empty());
  EXPECT_TRUE(non_empty_row_groups({}, 0, 0, "test").empty());
}

TEST(RowGroups, CountsMustCoverBothOperandsExactly) {
  EXPECT_THROW(non_empty_row_groups({2, 3}, 6, 5, "test"), std::logic_error);
  EXPECT_THROW(non_empty_row_groups({2, 3}, 5, 4, "test"), std::logic_error);
  EXPECT_THROW(non_empty_row_groups({2, 3}, 4, 4, "test"), std::logic_error);
  EXPECT_THROW(non_empty_row_groups({4, -1, 2}, 5, 5, "test"), std::logic_error);
  try {
    non_empty_row_groups({2, 3}, 6, 6, "grouped_matmul");
    FAIL() << "expected a logic_error";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("grouped_matmul: groups cover 5 rows"), std::string::npos)
        << e.what();
  }
}

TEST(RowGroups, GradientsSharingMemoryAreFound) {
  Arena arena;
  Tensor whole = Tensor::empty({8, 4}, DType::f32, arena);
  Tensor other = Tensor::empty({8, 4}, DType::f32, arena);
  Tensor top = whole.slice(0, 4), bottom = whole.slice(4, 8), middle = whole.slice(2, 6);
  const std::vector<RowGroup> three = non_empty_row_groups({1, 1, 1}, 3, 3, "test");
  // Distinct tensors, and adjacent row blocks of one tensor, are apart.
  EXPECT_FALSE(overlapping_group_tensors({&whole, &other, &top},
                                         non_empty_row_groups({1, 1, 0}, 2, 2, "test")));
  EXPECT_FALSE(overlapping_group_tensors({&top, &other, &bottom}, three));
  // The same tensor twice, or overlapping views, are not: the groups are named.
  const auto same = overlapping_group_tensors({&other, &whole, &whole}, three);
  ASSERT_TRUE(same);
  EXPECT_EQ(same->first + same->second, 3u);  // groups 1 and 2, in either order
  const auto views = overlapping_group_tensors({&bottom, &other, &middle}, three);
  ASSERT_TRUE(views);
  EXPECT_EQ(views->first, 2u);  // middle starts first
  EXPECT_EQ(views->second, 0u);
  // A view inside a larger tensor.
  Tensor last_row = whole.slice(7, 8);
  EXPECT_TRUE(overlapping_group_tensors({&last_row, &other, &whole}, three));
  // An empty group's tensor is not looked at.
  EXPECT_FALSE(overlapping_group_tensors({&whole, &whole, &other},
                                         non_empty_row_groups({1, 0, 1}, 2, 2, "test")));
}

}  // namespace
}  // namespace metamorph

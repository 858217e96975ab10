#include <gtest/gtest.h>

#include "parallel/communicator.hpp"

namespace metamorph {
namespace {

// The numbers of docs/parallelism.md, written out for p = 4 and a 1000-byte buffer.
TEST(ByteConvention, MatchesTheDocumentedFactors) {
  EXPECT_EQ(convention_bytes(CommOp::all_reduce, 1000, 4), 1500u);  // 2 (p-1)/p n
  EXPECT_EQ(convention_bytes(CommOp::reduce_scatter, 1000, 4), 750u);
  EXPECT_EQ(convention_bytes(CommOp::all_gather, 1000, 4), 750u);
  EXPECT_EQ(convention_bytes(CommOp::all_to_all, 1000, 4), 750u);
  EXPECT_EQ(convention_bytes(CommOp::exchange_counts, 32, 4), 24u);
  EXPECT_EQ(convention_bytes(CommOp::all_to_all_v, 1000, 4), 1000u);
  EXPECT_EQ(convention_bytes(CommOp::broadcast, 1000, 4), 1000u);
  EXPECT_EQ(convention_bytes(CommOp::send, 1000, 4), 1000u);
  EXPECT_EQ(convention_bytes(CommOp::barrier, 1000, 4), 0u);
  EXPECT_EQ(convention_bytes(CommOp::all_reduce, 1000, 3), 1333u);  // rounds down
}

TEST(ByteConvention, ASingleRankSendsNothingToItself) {
  for (CommOp op : {CommOp::all_reduce, CommOp::reduce_scatter, CommOp::all_gather,
                    CommOp::all_to_all, CommOp::broadcast})
    EXPECT_EQ(convention_bytes(op, 4096, 1), 0u) << comm_op_name(op);
}

}  // namespace
}  // namespace metamorph

// Every Communicator operation against values each rank can compute on its own.
#include <gtest/gtest.h>

#include <functional>
#include <numeric>

#include "runtime/core/error.hpp"
#include "tests/mpi/mpi_fixture.hpp"

namespace metamorph::test {
namespace {

using CommunicatorTest = MpiTest;

Tensor filled_f32(Arena& arena, std::int64_t n, const std::function<float(std::int64_t)>& f) {
  Tensor t = Tensor::empty({n}, DType::f32, arena);
  for (std::int64_t i = 0; i < n; ++i) t.data<float>()[i] = f(i);
  return t;
}

TEST_F(CommunicatorTest, AllReduceSumsKnownValues) {
  const int p = world->size(), r = world->rank();
  Tensor x = filled_f32(arena, 5, [&](std::int64_t i) { return float(r + 1) + float(i); });
  world->all_reduce(x);
  for (std::int64_t i = 0; i < 5; ++i)
    EXPECT_EQ(x.data<float>()[i], float(p * (p + 1) / 2) + float(p * i)) << i;
}

TEST_F(CommunicatorTest, AllReduceMaxAndIntegerDtypes) {
  const int p = world->size(), r = world->rank();
  Tensor x = filled_f32(arena, 3, [&](std::int64_t i) { return float((r * 7 + i) % p); });
  world->all_reduce(x, ReduceOp::max);
  for (std::int64_t i = 0; i < 3; ++i) EXPECT_EQ(x.data<float>()[i], float(p - 1));

  Tensor a = Tensor::empty({2}, DType::i32, arena);
  a.data<std::int32_t>()[0] = r;
  a.data<std::int32_t>()[1] = -r;
  world->all_reduce(a);
  EXPECT_EQ(a.data<std::int32_t>()[0], p * (p - 1) / 2);
  EXPECT_EQ(a.data<std::int32_t>()[1], -p * (p - 1) / 2);

  Tensor b = Tensor::empty({1}, DType::i64, arena);
  b.data<std::int64_t>()[0] = (std::int64_t{1} << 40) + r;
  world->all_reduce(b, ReduceOp::max);
  EXPECT_EQ(b.data<std::int64_t>()[0], (std::int64_t{1} << 40) + p - 1);
}

TEST_F(CommunicatorTest, StartedAllReduceCompletesOnWait) {
  const int p = world->size();
  Tensor x = filled_f32(arena, 4, [](std::int64_t i) { return float(i); });
  auto request = world->start_all_reduce(x);
  request->wait();
  EXPECT_TRUE(request->test());
  for (std::int64_t i = 0; i < 4; ++i) EXPECT_EQ(x.data<float>()[i], float(p * i));
}

TEST_F(CommunicatorTest, ReduceScatterGivesEachRankItsChunkSum) {
  const int p = world->size(), r = world->rank();
  const std::int64_t chunk = 3;
  Tensor in = filled_f32(arena, chunk * p, [&](std::int64_t i) { return float(r * 100 + i); });
  Tensor out = Tensor::empty({chunk}, DType::f32, arena);
  world->reduce_scatter(in.view({p, chunk}), out);
  for (std::int64_t k = 0; k < chunk; ++k) {
    float expected = 0;
    for (int q = 0; q < p; ++q) expected += float(q * 100 + r * chunk + k);
    EXPECT_EQ(out.data<float>()[k], expected) << k;
  }
}

TEST_F(CommunicatorTest, AllGatherConcatenatesInRankOrder) {
  const int p = world->size(), r = world->rank();
  Tensor in = Tensor::empty({2}, DType::i64, arena);
  in.data<std::int64_t>()[0] = r * 10;
  in.data<std::int64_t>()[1] = r * 10 + 1;
  Tensor out = Tensor::empty({p, 2}, DType::i64, arena);
  world->all_gather(in, out);
  for (int q = 0; q < p; ++q) {
    EXPECT_EQ(out.data<std::int64_t>()[2 * q], q * 10);
    EXPECT_EQ(out.data<std::int64_t>()[2 * q + 1], q * 10 + 1);
  }
}

// ZeRO-1's pattern: a reduce-scatter and an all-gather in flight together, then waited for.
TEST_F(CommunicatorTest, StartedReduceScatterAndAllGatherOverlap) {
  const int p = world->size(), r = world->rank();
  Tensor grads = filled_f32(arena, 2 * p, [&](std::int64_t i) { return float(i + r); });
  Tensor shard = Tensor::empty({2}, DType::f32, arena);
  Tensor param_shard = filled_f32(arena, 2, [&](std::int64_t i) { return float(10 * r + i); });
  Tensor params = Tensor::empty({2 * p}, DType::f32, arena);
  auto scatter = world->start_reduce_scatter(grads, shard);
  auto gather = world->start_all_gather(param_shard, params);
  gather->wait();
  scatter->wait();
  for (std::int64_t k = 0; k < 2; ++k)
    EXPECT_EQ(shard.data<float>()[k], float(p * (2 * r + k) + p * (p - 1) / 2));
  for (std::int64_t i = 0; i < 2 * p; ++i)
    EXPECT_EQ(params.data<float>()[i], float(10 * (i / 2) + i % 2));
}

TEST_F(CommunicatorTest, AllToAllTransposesChunks) {
  const int p = world->size(), r = world->rank();
  // Chunk j of rank r holds 100 r + j (twice), so chunk i received is 100 i + r.
  Tensor in = filled_f32(arena, 2 * p, [&](std::int64_t i) { return float(100 * r + i / 2); });
  Tensor out = Tensor::empty({2 * p}, DType::f32, arena);
  world->all_to_all(in, out);
  for (int i = 0; i < p; ++i)
    for (int k = 0; k < 2; ++k) EXPECT_EQ(out.data<float>()[2 * i + k], float(100 * i + r));
}

// Rank r sends (r + j) % 3 rows of width 2 to rank j; each row names (source, destination, row).
TEST_F(CommunicatorTest, AllToAllVMovesVariableRowCounts) {
  const int p = world->size(), r = world->rank();
  const auto rows_from = [](int src, int dst) { return std::int64_t((src + dst) % 3); };
  std::vector<std::int64_t> send_rows(static_cast<std::size_t>(p));
  for (int j = 0; j < p; ++j) send_rows[static_cast<std::size_t>(j)] = rows_from(r, j);
  const std::int64_t total = std::accumulate(send_rows.begin(), send_rows.end(), 0LL);
  Tensor in = Tensor::empty({total, 2}, DType::f32, arena);
  std::int64_t row = 0;
  for (int j = 0; j < p; ++j)
    for (std::int64_t k = 0; k < rows_from(r, j); ++k, ++row) {
      in.data<float>()[2 * row] = float(100 * r + j);
      in.data<float>()[2 * row + 1] = float(k);
    }
  std::vector<std::int64_t> recv_rows;
  Tensor out = world->all_to_all_v(in, send_rows, arena, recv_rows);
  row = 0;
  for (int i = 0; i < p; ++i) {
    EXPECT_EQ(recv_rows[static_cast<std::size_t>(i)], rows_from(i, r));
    for (std::int64_t k = 0; k < rows_from(i, r); ++k, ++row) {
      EXPECT_EQ(out.data<float>()[2 * row], float(100 * i + r));
      EXPECT_EQ(out.data<float>()[2 * row + 1], float(k));
    }
  }
  EXPECT_EQ(out.dim(0), row);
  // The reverse direction (combine) with both counts known sends the rows home.
  Tensor back = Tensor::empty({total, 2}, DType::f32, arena);
  world->all_to_all_v(out, recv_rows, back, send_rows);
  for (std::int64_t i = 0; i < 2 * total; ++i)
    EXPECT_EQ(back.data<float>()[i], in.data<float>()[i]);
}

// The started form (MPI_Ialltoallv): the rows have arrived once the request is waited for; the
// checks and the byte count are those of the blocking call.
TEST_F(CommunicatorTest, StartedAllToAllVCompletesOnWait) {
  const int p = world->size(), r = world->rank();
  const std::vector<std::int64_t> rows(static_cast<std::size_t>(p), 2);
  const Tensor in = filled_f32(arena, 4 * p, [&](std::int64_t i) {
                      return float(1000 * r + i);
                    }).view({2 * p, 2});
  Tensor out = Tensor::zeros({2 * p, 2}, DType::f32, arena);
  auto request = world->start_all_to_all_v(in, rows, out, rows);
  request->wait();
  EXPECT_TRUE(request->test());
  // Rows 2i and 2i + 1 came from rank i: its elements 4r .. 4r + 3.
  for (int i = 0; i < p; ++i)
    for (int k = 0; k < 4; ++k)
      EXPECT_EQ(out.data<float>()[4 * i + k], float(1000 * i + 4 * r + k));
  EXPECT_EQ(world->bytes_sent(CommOp::all_to_all_v), static_cast<std::uint64_t>(p - 1) * 16);
}

// Rank 0 routes no tokens at all (an empty input) but still receives one row from every peer.
TEST_F(CommunicatorTest, AllToAllVWithAnEmptyInput) {
  const int p = world->size(), r = world->rank();
  std::vector<std::int64_t> send_rows(static_cast<std::size_t>(p), r == 0 ? 0 : 1);
  Tensor in = Tensor::empty({r == 0 ? 0 : p, 3}, DType::i32, arena);
  for (std::int64_t i = 0; i < in.numel(); ++i) in.data<std::int32_t>()[i] = r;
  std::vector<std::int64_t> recv_rows;
  Tensor out = world->all_to_all_v(in, send_rows, arena, recv_rows);
  ASSERT_EQ(out.shape(), (Shape{p - 1, 3}));
  for (int i = 0; i < p; ++i) EXPECT_EQ(recv_rows[static_cast<std::size_t>(i)], i == 0 ? 0 : 1);
  for (std::int64_t i = 0; i < out.numel(); ++i) EXPECT_EQ(out.data<std::int32_t>()[i], 1 + i / 3);
}

TEST_F(CommunicatorTest, BroadcastCopiesTheRootsTensor) {
  const int p = world->size(), r = world->rank();
  Tensor x = filled_f32(arena, 6, [&](std::int64_t i) { return float(r * 1000 + i); });
  world->broadcast(x, p - 1);
  for (std::int64_t i = 0; i < 6; ++i) EXPECT_EQ(x.data<float>()[i], float((p - 1) * 1000 + i));
}

TEST_F(CommunicatorTest, BlockingSendRecvAroundARing) {
  const int p = world->size(), r = world->rank();
  if (p == 1) GTEST_SKIP();
  Tensor mine = filled_f32(arena, 3, [&](std::int64_t i) { return float(r * 10 + i); });
  Tensor got = Tensor::empty({3}, DType::f32, arena);
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  // Even ranks send first, odd ranks receive first: blocking calls cannot deadlock.
  if (r % 2 == 0) {
    world->send(mine, next, 7);
    world->recv(got, prev, 7);
  } else {
    world->recv(got, prev, 7);
    world->send(mine, next, 7);
  }
  for (std::int64_t i = 0; i < 3; ++i) EXPECT_EQ(got.data<float>()[i], float(prev * 10 + i));
}

TEST_F(CommunicatorTest, NonblockingSendRecvBothDirections) {
  const int p = world->size(), r = world->rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  Tensor to_next = filled_f32(arena, 4, [&](std::int64_t i) { return float(r + i); });
  Tensor to_prev = filled_f32(arena, 4, [&](std::int64_t i) { return float(-r - i); });
  Tensor from_prev = Tensor::empty({4}, DType::f32, arena);
  Tensor from_next = Tensor::empty({4}, DType::f32, arena);
  auto a = world->start_recv(from_prev, prev, 1);
  auto b = world->start_recv(from_next, next, 2);
  auto c = world->start_send(to_next, next, 1);
  auto d = world->start_send(to_prev, prev, 2);
  for (auto* request : {a.get(), b.get(), c.get(), d.get()}) request->wait();
  for (std::int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(from_prev.data<float>()[i], float(prev + i));
    EXPECT_EQ(from_next.data<float>()[i], float(-next - i));
  }
}

TEST_F(CommunicatorTest, BarrierReturnsOnEveryRank) {
  world->barrier();
  world->barrier();
  EXPECT_EQ(world->counters().calls_of(CommOp::barrier), 2u);
  EXPECT_EQ(world->bytes_sent(), 0u);
}

TEST_F(CommunicatorTest, BytesSentFollowTheConvention) {
  const auto p = static_cast<std::uint64_t>(world->size());
  const int r = world->rank();
  Tensor x = Tensor::zeros({10, 6}, DType::f32, arena);  // 240 bytes
  world->all_reduce(x);
  EXPECT_EQ(world->bytes_sent(CommOp::all_reduce), 2 * (p - 1) * 240 / p);
  Tensor chunk = Tensor::zeros({static_cast<std::int64_t>(4)}, DType::f32, arena);
  Tensor full = Tensor::zeros({static_cast<std::int64_t>(4 * p)}, DType::f32, arena);
  world->reduce_scatter(full, chunk);
  EXPECT_EQ(world->bytes_sent(CommOp::reduce_scatter), (p - 1) * 16);
  world->all_gather(chunk, full);
  EXPECT_EQ(world->bytes_sent(CommOp::all_gather), (p - 1) * 16);
  Tensor full2 = Tensor::zeros({static_cast<std::int64_t>(4 * p)}, DType::f32, arena);
  world->all_to_all(full, full2);
  EXPECT_EQ(world->bytes_sent(CommOp::all_to_all), (p - 1) * 16);
  world->broadcast(x, 0);
  EXPECT_EQ(world->bytes_sent(CommOp::broadcast), p > 1 ? 240u : 0u);
  // all_to_all_v counts exactly the rows leaving this rank: 1 row (24 bytes) per peer plus 3
  // rows kept at home.
  std::vector<std::int64_t> rows(p, 1);
  rows[static_cast<std::size_t>(r)] = 3;
  Tensor v = Tensor::zeros({static_cast<std::int64_t>(p + 2), 6}, DType::f32, arena);
  Tensor w = Tensor::zeros({static_cast<std::int64_t>(p + 2), 6}, DType::f32, arena);
  world->all_to_all_v(v, rows, w, rows);
  EXPECT_EQ(world->bytes_sent(CommOp::all_to_all_v), (p - 1) * 24);
  EXPECT_EQ(world->bytes_sent(CommOp::exchange_counts), 0u);  // checks are not counted
  world->exchange_counts(rows);
  EXPECT_EQ(world->bytes_sent(CommOp::exchange_counts), (p - 1) * 8);
  if (p > 1) {
    Tensor msg = Tensor::zeros({5}, DType::i64, arena);
    if (r == 0) world->send(msg, 1);
    if (r == 1) world->recv(msg, 0);
    EXPECT_EQ(world->bytes_sent(CommOp::send), r == 0 ? 40u : 0u);
  }
  const std::uint64_t total = world->bytes_sent();
  std::uint64_t sum = 0;
  for (int op = 0; op < kCommOpCount; ++op) sum += world->bytes_sent(static_cast<CommOp>(op));
  EXPECT_EQ(total, sum);
  EXPECT_EQ(world->counters().calls_of(CommOp::all_reduce), 1u);
  world->reset_counters();
  EXPECT_EQ(world->bytes_sent(), 0u);
}

TEST_F(CommunicatorTest, SizeCheckNamesTheOpAndTheSizesOnEveryRank) {
  const int p = world->size(), r = world->rank();
  if (p == 1) GTEST_SKIP();
  Tensor x = Tensor::zeros({r == 1 ? 12 : 16}, DType::f32, arena);
  try {
    world->all_reduce(x);
    ADD_FAILURE() << "no error";
  } catch (const std::logic_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("all_reduce"), std::string::npos) << m;
    EXPECT_NE(m.find("12 to 16 elements"), std::string::npos) << m;
  }
  // Counts that disagree with what the peers send.
  std::vector<std::int64_t> send_rows(static_cast<std::size_t>(p), 1), recv_rows = send_rows;
  if (r == 0) recv_rows[1] = 2;
  Tensor in = Tensor::zeros({p, 1}, DType::f32, arena);
  Tensor out = Tensor::zeros({p + 1, 1}, DType::f32, arena);
  try {
    world->all_to_all_v(in, send_rows, out, recv_rows);
    ADD_FAILURE() << "no error";
  } catch (const std::logic_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("all_to_all_v"), std::string::npos) << m;
    if (r == 0) {
      EXPECT_NE(m.find("expects 2 rows from rank 1, which sends 1"), std::string::npos) << m;
    }
  }
}

TEST_F(CommunicatorTest, OptionsFromEnvironmentRejectBadTimeouts) {
  setenv("METAMORPH_COMM_TIMEOUT", "2.5", 1);
  EXPECT_EQ(MpiOptions::from_environment().timeout_s, 2.5);
  setenv("METAMORPH_COMM_TIMEOUT", "soon", 1);
  EXPECT_THROW(MpiOptions::from_environment(), InputError);
  unsetenv("METAMORPH_COMM_TIMEOUT");
  EXPECT_EQ(MpiOptions::from_environment().timeout_s, 600.0);
}

}  // namespace
}  // namespace metamorph::test

// The NCCL Communicator on GPU tensors, one GPU per rank (label gpu; skipped where fewer GPUs
// than ranks are visible): every operation against values computed on the host, the byte
// counters against the convention the MPI backend follows, blocking operations (on the compute
// stream) mixed with started ones (on the communicator's stream) without host waits, groups carved
// out of an NCCL world, expert parallelism's exchange on device rows, and the watchdog ending a
// wait on a peer that never joins, for either form.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <thread>

#include "parallel/ep_expert_exchange.hpp"
#include "parallel/groups.hpp"
#include "parallel/nccl_communicator.hpp"
#include "runtime/backends/cuda/cuda_arena.hpp"
#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_transfer.hpp"

namespace metamorph {
namespace {

class NcclComm : public ::testing::Test {
 protected:
  void SetUp() override {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    int fewest = devices;
    MPI_Allreduce(MPI_IN_PLACE, &fewest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (fewest < size_) GTEST_SKIP() << "needs one GPU per rank (" << fewest << " visible)";
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    ASSERT_EQ(cudaSetDevice(local != nullptr ? std::atoi(local) : rank_), cudaSuccess);
    MpiOptions options;
    options.timeout_s = 20;
    options.abort_on_timeout = false;
    options.size_checks = true;
    comm_ = NcclCommunicator::create(MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", options));
  }

  // A device tensor holding `values`.
  Tensor device(const std::vector<float>& values, DType dtype = DType::f32) {
    Tensor host = Tensor::empty({static_cast<std::int64_t>(values.size())}, DType::f32, host_);
    std::copy(values.begin(), values.end(), host.data<float>());
    return cuda::to_device(host, device_, dtype);
  }
  std::vector<float> values(const Tensor& t) {
    const Tensor host = cuda::to_host(t, host_, DType::f32);
    return {host.data<float>(), host.data<float>() + host.numel()};
  }

  // Rank r sends r + j rows of width 2, (100 r + j, k) for k < r + j, to rank j (rank 0 sends
  // nothing to itself; with two or more ranks every rank sends and receives something).
  struct UnevenExchange {
    std::vector<std::int64_t> send, recv;
    Tensor in, out;  // out starts at -1
  };
  UnevenExchange uneven_exchange() {
    UnevenExchange e;
    e.send.resize(static_cast<std::size_t>(size_));
    e.recv.resize(e.send.size());
    std::vector<float> rows;
    for (int j = 0; j < size_; ++j) {
      e.send[static_cast<std::size_t>(j)] = rank_ + j;
      e.recv[static_cast<std::size_t>(j)] = j + rank_;
      for (int k = 0; k < rank_ + j; ++k) rows.insert(rows.end(), {100.0f * rank_ + j, 1.0f * k});
    }
    const std::int64_t total = std::accumulate(e.recv.begin(), e.recv.end(), std::int64_t{0});
    e.in = device(rows).view({static_cast<std::int64_t>(rows.size()) / 2, 2});
    e.out = device(std::vector<float>(static_cast<std::size_t>(2 * total), -1)).view({total, 2});
    return e;
  }
  // Rank i's rows to this rank, in rank order.
  void expect_received(const UnevenExchange& e) {
    const auto got = values(e.out);
    std::size_t at = 0;
    for (int i = 0; i < size_; ++i)
      for (int k = 0; k < i + rank_; ++k, at += 2) {
        EXPECT_EQ(got[at], 100.0f * i + rank_);
        EXPECT_EQ(got[at + 1], static_cast<float>(k));
      }
  }

  int size_ = 1, rank_ = 0;
  Arena host_;
  cuda::CudaArena device_;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(NcclComm, AllReduceSumAndMaxInF32AndBf16) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    Tensor x = device({1.0f + rank_, 2.0f * rank_, -3.0f}, dtype);
    comm_->all_reduce(x);
    const float n = static_cast<float>(size_);
    EXPECT_EQ(values(x), (std::vector<float>{n + n * (n - 1) / 2, n * (n - 1), -3.0f * n}));
    Tensor m = device({static_cast<float>(rank_), -static_cast<float>(rank_)}, dtype);
    comm_->all_reduce(m, ReduceOp::max);
    EXPECT_EQ(values(m), (std::vector<float>{n - 1, 0.0f}));
  }
  // The byte convention is the backend-independent one: 2(p-1)/p of each buffer.
  std::uint64_t expected = 0;
  for (std::uint64_t bytes : {12, 8, 6, 4})
    expected += convention_bytes(CommOp::all_reduce, bytes, size_);
  EXPECT_EQ(comm_->bytes_sent(CommOp::all_reduce), expected);
}

TEST_F(NcclComm, ReduceScatterAndAllGatherAreInverses) {
  std::vector<float> mine(static_cast<std::size_t>(3 * size_));
  std::iota(mine.begin(), mine.end(), static_cast<float>(rank_));
  const Tensor in = device(mine);
  Tensor part = device(std::vector<float>(3, -1.0f));
  comm_->reduce_scatter(in, part);
  std::vector<float> expected(3);
  for (int i = 0; i < 3; ++i)
    for (int r = 0; r < size_; ++r) expected[static_cast<std::size_t>(i)] += 3 * rank_ + i + r;
  EXPECT_EQ(values(part), expected);
  Tensor gathered = device(std::vector<float>(static_cast<std::size_t>(3 * size_), -1.0f));
  comm_->all_gather(part, gathered);
  const auto all = values(gathered);
  for (int r = 0; r < size_; ++r)
    for (int i = 0; i < 3; ++i) {
      float sum = 0;
      for (int s = 0; s < size_; ++s) sum += 3 * r + i + s;
      EXPECT_EQ(all[static_cast<std::size_t>(3 * r + i)], sum);
    }
}

TEST_F(NcclComm, AllToAllVWithEmptyPeersAndBroadcast) {
  UnevenExchange e = uneven_exchange();
  comm_->all_to_all_v(e.in, e.send, e.out, e.recv);
  expect_received(e);
  Tensor b = device({rank_ == 1 ? 7.0f : 0.0f, rank_ == 1 ? 8.0f : 0.0f});
  comm_->broadcast(b, 1);
  EXPECT_EQ(values(b), (std::vector<float>{7.0f, 8.0f}));
}

// The even all-to-all (NCCL's one-call form where the library has it): block j of rank i lands
// as block i on rank j, three elements per peer (no multiple of a vector width), in both dtypes,
// also right behind a started all-reduce that is still running.
TEST_F(NcclComm, EvenAllToAllMovesBlockJToRankJ) {
  constexpr int kEach = 3;
  for (DType dtype : {DType::f32, DType::bf16}) {
    std::vector<float> mine;
    for (int j = 0; j < size_; ++j)
      for (int k = 0; k < kEach; ++k) mine.push_back(16.0f * rank_ + 4.0f * j + k);
    const Tensor in = device(mine, dtype);
    Tensor out = device(std::vector<float>(mine.size(), -1.0f), dtype);
    Tensor big = device(std::vector<float>(1 << 22, 1.0f));
    auto started = comm_->start_all_reduce(big);
    comm_->all_to_all(in, out);
    started->wait();
    std::vector<float> expected;
    for (int i = 0; i < size_; ++i)
      for (int k = 0; k < kEach; ++k) expected.push_back(16.0f * i + 4.0f * rank_ + k);
    EXPECT_EQ(values(out), expected) << dtype_name(dtype);
    EXPECT_EQ(values(big)[4321], static_cast<float>(size_));
  }
}

TEST_F(NcclComm, SendRecvRingAndOverlappedAllReduce) {
  const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
  Tensor out = device({static_cast<float>(rank_), 1.5f});
  Tensor in = device({-1.0f, -1.0f});
  // Even ranks send first, odd ranks receive first: no cycle of blocked sends.
  if (rank_ % 2 == 0) {
    auto s = comm_->start_send(out, next);
    comm_->recv(in, prev);
    s->wait();
  } else {
    comm_->recv(in, prev);
    comm_->send(out, next);
  }
  EXPECT_EQ(values(in), (std::vector<float>{static_cast<float>(prev), 1.5f}));
  Tensor big = device(std::vector<float>(1 << 20, 1.0f));
  auto request = comm_->start_all_reduce(big);
  request->wait();
  EXPECT_TRUE(request->test());
  EXPECT_EQ(values(big)[12345], static_cast<float>(size_));
}

// Completion is ordered on the GPU: operations queued without any host wait, each followed by a
// copy on the compute stream that snapshots the result, see every reduction complete in turn, in
// either form: the blocking one runs on the compute stream, the started one's wait() makes the
// compute stream wait for the communicator's stream.
TEST_F(NcclComm, StreamOrderedCompletionChainsWithoutHostWaits) {
  constexpr int kRounds = 20;
  for (const bool started : {false, true}) {
    Tensor x = device(std::vector<float>(1 << 22, 1.0f));  // 16 MiB: the reductions take a while
    Tensor snapshots = device(std::vector<float>(kRounds, -1.0f));
    for (int i = 0; i < kRounds; ++i) {
      // x *= size
      if (started)
        comm_->start_all_reduce(x)->wait();
      else
        comm_->all_reduce(x);
      // On the compute stream, right behind the collective: the last element, after it.
      cudaMemcpyAsync(static_cast<float*>(snapshots.raw()) + i,
                      static_cast<const float*>(x.raw()) + (x.numel() - 1), sizeof(float),
                      cudaMemcpyDeviceToDevice, nullptr);
    }
    comm_->synchronize();
    const auto got = values(snapshots);
    for (int i = 0; i < kRounds; ++i)
      EXPECT_EQ(got[static_cast<std::size_t>(i)], std::pow(static_cast<float>(size_), i + 1.0f))
          << (started ? "started" : "blocking") << " form, round " << i;
  }
}

// A blocking all-reduce runs on the compute stream while a started one is on the communicator's
// stream: the communicator orders them as issued (the blocking one waits for the started one on
// the GPU), and both sums come out right, round after round with no host wait in between.
TEST_F(NcclComm, BlockingAllReduceBetweenAStartedOneAndItsWait) {
  constexpr int kRounds = 8;
  constexpr std::size_t kElements = 1 << 22;  // 16 MiB: the started sum is still running
  Tensor a = device(std::vector<float>(kElements, 1.0f));
  Tensor b = device(std::vector<float>(kElements, static_cast<float>(rank_ + 1)));
  for (int i = 0; i < kRounds; ++i) {
    auto started = comm_->start_all_reduce(a);  // a *= size
    comm_->all_reduce(b);                       // b *= size after the first round
    started->wait();
  }
  const float n = static_cast<float>(size_);
  const float a_expected = std::pow(n, static_cast<float>(kRounds));
  const float b_expected = n * (n + 1) / 2 * std::pow(n, kRounds - 1.0f);
  const auto got_a = values(a), got_b = values(b);
  for (std::size_t at : {std::size_t{0}, kElements / 2, kElements - 1}) {
    EXPECT_EQ(got_a[at], a_expected) << "element " << at;
    EXPECT_EQ(got_b[at], b_expected) << "element " << at;
  }
}

// A blocking all-to-all-v (compute stream), then a started all-reduce of a copy the compute
// stream makes of the rows it received (the communicator's stream must wait for both), then a
// blocking broadcast issued while the all-reduce is still in flight.
TEST_F(NcclComm, BlockingAllToAllVThenStartedAllReduceAndBlockingBroadcast) {
  UnevenExchange e = uneven_exchange();
  Tensor first = device({-1.0f, -1.0f});
  Tensor b = device({rank_ == 0 ? 7.0f : 0.0f, rank_ == 0 ? 8.0f : 0.0f});
  comm_->all_to_all_v(e.in, e.send, e.out, e.recv);
  // On the compute stream, right behind the exchange: the first row this rank received.
  ASSERT_EQ(cudaMemcpyAsync(first.raw(), e.out.raw(), 2 * sizeof(float), cudaMemcpyDeviceToDevice,
                            nullptr),
            cudaSuccess);
  auto started = comm_->start_all_reduce(first);
  comm_->broadcast(b, 0);
  started->wait();
  expect_received(e);
  // Rank r's first row came from the lowest rank i sending it any (i + r > 0): (100 i + r, 0).
  float sum = 0;
  for (int r = 0; r < size_; ++r) sum += r == 0 ? 100.0f : static_cast<float>(r);
  EXPECT_EQ(values(first), (std::vector<float>{sum, 0.0f}));
  EXPECT_EQ(values(b), (std::vector<float>{7.0f, 8.0f}));
}

TEST_F(NcclComm, GroupsOfAnNcclWorld) {
  Layout layout;
  layout.tp = size_;
  ParallelGroups groups(std::move(comm_), layout);
  Tensor x = device({1.0f});
  groups.tp().all_reduce(x);
  EXPECT_EQ(values(x), std::vector<float>{static_cast<float>(size_)});
  Tensor y = device({2.0f});
  groups.dp().all_reduce(y);  // a group of one
  EXPECT_EQ(values(y), std::vector<float>{2.0f});
}

// Expert parallelism's exchange on bf16 device rows (what `train --device cuda --ep N` runs):
// dispatch groups them by local expert and source rank, and the started combine, whose
// all-to-all runs on the communicator's stream while the compute stream queues other work,
// brings every row back scaled by its expert's factor. Rank r routes (r + 2e) % 3 rows to
// expert e (none for some), each row holding (source, expert, index): small integers, exact in
// bf16.
TEST_F(NcclComm, ExpertExchangeMovesDeviceRows) {
  cuda::CudaBackend gpu(device_);
  const std::int64_t experts = 2 * size_, local = 2, width = 3;
  EpExpertExchange exchange(*comm_, experts, gpu);
  EXPECT_TRUE(exchange.combines_in_background());
  auto routed = [](int source, std::int64_t e) { return (source + 2 * e) % 3; };
  std::vector<std::int64_t> send(static_cast<std::size_t>(experts));
  std::vector<float> rows;
  for (std::int64_t e = 0; e < experts; ++e) {
    send[static_cast<std::size_t>(e)] = routed(rank_, e);
    for (std::int64_t i = 0; i < routed(rank_, e); ++i)
      rows.insert(rows.end(),
                  {static_cast<float>(rank_), static_cast<float>(e), static_cast<float>(i)});
  }
  const auto n = static_cast<std::int64_t>(rows.size()) / width;
  const Tensor in = device(rows, DType::bf16).view({n, width});
  const ExchangePlan plan = exchange.plan(send);
  const Tensor got = exchange.dispatch(plan, in);
  ASSERT_EQ(got.device(), Device::cuda);
  std::vector<float> expected, scaled;
  for (std::int64_t e = 0; e < local; ++e) {
    const std::int64_t global = rank_ * local + e;
    for (int j = 0; j < size_; ++j)
      for (std::int64_t i = 0; i < routed(j, global); ++i) {
        const std::vector<float> row = {static_cast<float>(j), static_cast<float>(global),
                                        static_cast<float>(i)};
        expected.insert(expected.end(), row.begin(), row.end());
        for (float v : row) scaled.push_back(v * static_cast<float>(global + 1));
      }
  }
  EXPECT_EQ(values(got), expected);
  // The experts' "output": each row times (its global expert + 1).
  const Tensor out = device(scaled, DType::bf16).view({got.dim(0), width});
  ExpertExchange::PendingRows combining = exchange.start_combine(plan, out);
  // Work queued while the rows move must not land in the exchange's buffers.
  Tensor scratch = gpu.empty({n + got.dim(0), width}, DType::bf16);
  gpu.fill(scratch, -7.0f);
  const Tensor back = combining.finish();
  std::vector<float> want(rows);
  for (std::size_t r = 0; r < want.size(); ++r) want[r] *= rows[r / 3 * 3 + 1] + 1.0f;
  EXPECT_EQ(values(back), want);
}

// Last (this and the next): the communicator is aborted afterwards.
TEST_F(NcclComm, WatchdogEndsAWaitOnAPeerThatNeverJoins) {
  MpiOptions options;
  options.timeout_s = 2;
  options.abort_on_timeout = false;
  options.size_checks = false;  // the NCCL operation, not a host-side check, must be what hangs
  auto comm = NcclCommunicator::create(MpiCommunicator::duplicate(MPI_COMM_WORLD, "late", options));
  if (rank_ == 0) {
    Tensor x = device(std::vector<float>(1024, 1.0f));
    try {
      // The started form, on the communicator's stream: wait() returns once the compute stream
      // waits for it; the watchdog thread, or the host wait of synchronize, finds that it never
      // completes.
      comm->start_all_reduce(x)->wait();
      comm->synchronize();
      ADD_FAILURE() << "an all-reduce without its peers completed";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("did not complete within 2 s"), std::string::npos)
          << e.what();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  comm->abort();  // a destroy would wait for the peer that rank 0 already left
}

// The blocking form runs on the compute stream and returns once queued; with no host wait at all,
// only the watchdog thread can find that it never completes, and the next call says so, naming
// the operation.
TEST_F(NcclComm, WatchdogEndsABlockingCollectiveTheHostNeverWaitsFor) {
  MpiOptions options;
  options.timeout_s = 2;
  options.abort_on_timeout = false;
  options.size_checks = false;
  auto comm = NcclCommunicator::create(
      MpiCommunicator::duplicate(MPI_COMM_WORLD, "late_blocking", options));
  Tensor x = device(std::vector<float>(1024, 1.0f));
  // Both ranks first: NCCL connects the peers lazily, inside the first operation's call, and a
  // peer that never joins would fail that call on the host (settle) before any kernel is queued.
  comm->all_reduce(x);
  comm->synchronize();
  if (rank_ == 0) {
    // Uploaded now: an upload after the hung operation would wait behind it on the compute stream.
    Tensor y = device({1.0f});
    comm->all_reduce(x);
    std::this_thread::sleep_for(std::chrono::seconds(4));
    try {
      comm->all_reduce(y);
      ADD_FAILURE() << "a blocking all-reduce without its peers went unnoticed";
    } catch (const CommError& e) {
      EXPECT_NE(
          std::string(e.what()).find("all_reduce of 1024 elements did not complete within 2 s"),
          std::string::npos)
          << e.what();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  comm->abort();
}

}  // namespace
}  // namespace metamorph

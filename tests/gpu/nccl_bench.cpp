// Bus bandwidth of the NCCL Communicator next to raw NCCL calls (a plain blocking NCCL
// communicator and stream, as a user would write them) on the same buffers (not a test;
// tests/gpu/run_nccl_on_gpus.sh runs it under mpirun, one GPU per rank). As nccl-tests does, a
// sample is kBackToBack calls in a row followed by one wait for the GPU (the runtime's
// collectives complete on the compute stream, so a training step also queues them back to back);
// medians over many samples after warm-up. Bus bandwidth follows nccl-tests: all-reduce moves
// 2(p-1)/p of the buffer per rank, all-to-all (p-1)/p. The all-reduce is timed in both forms: the
// blocking call (on the compute stream) and start_all_reduce followed by wait() (on the
// communicator's stream, two cross-stream hops per call). Below each size's rows, `where` lines
// time raw ncclAllReduce in the settings ours differs in (the legacy default stream, the
// collective lane's NCCL communicator, our call on a non-blocking compute stream; for the
// all-to-all also raw ncclAlltoAll), so a gap at small sizes can be placed; `host` lines give the
// host time per call until queued (where it exceeds the GPU's time, the host is the bound).
// usage: nccl_bench [repeats=20] [largest bytes=1 GiB]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "parallel/nccl_communicator.hpp"
#include "runtime/backends/cuda/cuda_arena.hpp"

namespace {

using namespace metamorph;

constexpr int kBackToBack = 10;

struct Timing {
  double seconds;       // per call, until the GPU has finished
  double host_seconds;  // per call, until the host has queued it
};

// Per-call times of `op`; `sync` waits until the GPU has finished what op queued.
Timing median_timing(int repeats, const std::function<void()>& op,
                     const std::function<void()>& sync) {
  for (int i = 0; i < 3; ++i) op();
  sync();
  std::vector<double> times, host_times;
  for (int i = 0; i < repeats; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < kBackToBack; ++k) op();
    const auto queued = std::chrono::steady_clock::now();
    sync();
    const auto end = std::chrono::steady_clock::now();
    times.push_back(std::chrono::duration<double>(end - start).count() / kBackToBack);
    host_times.push_back(std::chrono::duration<double>(queued - start).count() / kBackToBack);
  }
  // The slowest rank decides a collective's time.
  std::sort(times.begin(), times.end());
  std::sort(host_times.begin(), host_times.end());
  double medians[2] = {times[times.size() / 2], host_times[host_times.size() / 2]};
  MPI_Allreduce(MPI_IN_PLACE, medians, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return {medians[0], medians[1]};
}

double median_seconds(int repeats, const std::function<void()>& op,
                      const std::function<void()>& sync) {
  return median_timing(repeats, op, sync).seconds;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
  const long long largest = argc > 2 ? std::atoll(argv[2]) : 1LL << 30;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  cudaSetDevice(local != nullptr ? std::atoi(local) : rank);
  auto comm = NcclCommunicator::create(
      MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions::from_environment()));
  ncclUniqueId id{};
  if (rank == 0) ncclGetUniqueId(&id);
  MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t raw = nullptr;
  ncclCommInitRank(&raw, size, id, rank);
  cudaStream_t raw_stream = nullptr;
  cudaStreamCreateWithFlags(&raw_stream, cudaStreamNonBlocking);
  cuda::CudaArena arena;
  const double p = size;
  if (rank == 0)
    std::printf("%-18s %12s %14s %14s %8s\n", "op", "bytes", "ours GB/s", "raw GB/s", "ratio");
  cudaStream_t side_stream = nullptr;
  cudaStreamCreateWithFlags(&side_stream, cudaStreamNonBlocking);
  for (std::int64_t bytes : {1LL << 20, 16LL << 20, 64LL << 20, 256LL << 20, 1LL << 30}) {
    if (bytes > largest) break;
    const std::int64_t n = bytes / 2;  // bf16 elements
    Tensor x = Tensor::empty({n}, DType::bf16, arena, Device::cuda);
    Tensor y = Tensor::empty({n}, DType::bf16, arena, Device::cuda);
    cudaMemset(x.raw(), 0, static_cast<std::size_t>(bytes));
    cudaMemset(y.raw(), 0, static_cast<std::size_t>(bytes));
    cudaDeviceSynchronize();
    const auto count = static_cast<std::size_t>(n);
    auto ours_sync = [] { cudaDeviceSynchronize(); };
    auto raw_sync = [&] { cudaStreamSynchronize(raw_stream); };
    const double ours_ar = median_seconds(
        repeats, [&] { comm->all_reduce(x); }, ours_sync);
    const double ours_started_ar = median_seconds(
        repeats, [&] { comm->start_all_reduce(x)->wait(); }, ours_sync);
    const double raw_ar = median_seconds(
        repeats,
        [&] { ncclAllReduce(x.raw(), x.raw(), count, ncclBfloat16, ncclSum, raw, raw_stream); },
        raw_sync);
    const Timing ours_a2a_timing = median_timing(
        repeats, [&] { comm->all_to_all(x, y); }, ours_sync);
    const double ours_a2a = ours_a2a_timing.seconds;
    // Grouped send/recv to every peer, as nccl-tests' alltoall does, on the given stream.
    const auto raw_a2a_with = [&](ncclComm_t handle, cudaStream_t stream) {
      const std::size_t chunk = count / static_cast<std::size_t>(size);
      ncclGroupStart();
      for (int peer = 0; peer < size; ++peer) {
        ncclSend(static_cast<char*>(x.raw()) + 2 * chunk * static_cast<std::size_t>(peer), chunk,
                 ncclBfloat16, peer, handle, stream);
        ncclRecv(static_cast<char*>(y.raw()) + 2 * chunk * static_cast<std::size_t>(peer), chunk,
                 ncclBfloat16, peer, handle, stream);
      }
      ncclGroupEnd();
    };
    const auto raw_a2a_on = [&](cudaStream_t stream) { raw_a2a_with(raw, stream); };
    const Timing raw_a2a_timing = median_timing(
        repeats, [&] { raw_a2a_on(raw_stream); }, raw_sync);
    const double raw_a2a = raw_a2a_timing.seconds;
    const auto b = static_cast<double>(bytes);
    const double ar = 2 * (p - 1) / p * b / 1e9, a2a = (p - 1) / p * b / 1e9;
    if (rank == 0) {
      const auto row = [&](const char* op, double bus_bytes, double ours, double raw_s) {
        std::printf("%-18s %12lld %14.1f %14.1f %8.3f\n", op, static_cast<long long>(bytes),
                    bus_bytes / ours, bus_bytes / raw_s, raw_s / ours);
      };
      row("all_reduce", ar, ours_ar, raw_ar);
      row("all_reduce_started", ar, ours_started_ar, raw_ar);
      row("all_to_all", a2a, ours_a2a, raw_a2a);
    }
    // Where a small-message gap comes from: the same raw call in each of ours' settings.
    const double raw_legacy = median_seconds(
        repeats,
        [&] { ncclAllReduce(x.raw(), x.raw(), count, ncclBfloat16, ncclSum, raw, nullptr); },
        ours_sync);
    const double raw_on_ours = median_seconds(
        repeats,
        [&] {
          ncclAllReduce(x.raw(), x.raw(), count, ncclBfloat16, ncclSum, comm->handle(), raw_stream);
        },
        raw_sync);
    const double raw_a2a_legacy = median_seconds(
        repeats, [&] { raw_a2a_on(nullptr); }, ours_sync);
    const double raw_a2a_on_ours = median_seconds(
        repeats, [&] { raw_a2a_with(comm->handle(), raw_stream); }, raw_sync);
    const Timing raw_alltoall = median_timing(
        repeats,
        [&] {
          ncclAlltoAll(x.raw(), y.raw(), count / static_cast<std::size_t>(size), ncclBfloat16, raw,
                       raw_stream);
        },
        raw_sync);
    cudaEvent_t event = nullptr;
    cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    const Timing event_record = median_timing(
        repeats, [&] { cudaEventRecord(event, nullptr); }, ours_sync);
    cudaEventDestroy(event);
    const std::vector<std::int64_t> even(static_cast<std::size_t>(size), n / size);
    const double ours_started_a2a = median_seconds(
        repeats, [&] { comm->start_all_to_all_v(x, even, y, even)->wait(); }, ours_sync);
    comm->set_compute_stream(side_stream);
    const double ours_side = median_seconds(
        repeats, [&] { comm->all_reduce(x); }, [&] { cudaStreamSynchronize(side_stream); });
    const double ours_side_a2a = median_seconds(
        repeats, [&] { comm->all_to_all(x, y); }, [&] { cudaStreamSynchronize(side_stream); });
    comm->set_compute_stream(nullptr);
    if (rank == 0) {
      // One row: `t` against the raw call's time `raw_t`, in bus bandwidth of `bus` bytes.
      const auto where = [&](const char* what, double bus, double raw_t, double t) {
        std::printf("where %-44s %12lld %14.1f %14.1f %8.3f\n", what, static_cast<long long>(bytes),
                    bus / t, bus / raw_t, raw_t / t);
      };
      where("raw all_reduce on the legacy default stream", ar, raw_ar, raw_legacy);
      where("raw all_reduce on our collective NCCL comm", ar, raw_ar, raw_on_ours);
      where("our all_reduce, compute stream non-blocking", ar, raw_ar, ours_side);
      where("raw all_to_all on the legacy default stream", a2a, raw_a2a, raw_a2a_legacy);
      where("our all_to_all started (lane), then waited", a2a, raw_a2a, ours_started_a2a);
      where("our all_to_all, compute stream non-blocking", a2a, raw_a2a, ours_side_a2a);
      where("raw all_to_all on our collective NCCL comm", a2a, raw_a2a, raw_a2a_on_ours);
      where("raw ncclAlltoAll (one call, NCCL >= 2.28)", a2a, raw_a2a, raw_alltoall.seconds);
      // Host time per call (queued, not finished): at small sizes the host can be the bound.
      const auto host = [&](const char* what, const Timing& t) {
        std::printf("host  %-44s %12lld %11.2f us\n", what, static_cast<long long>(bytes),
                    t.host_seconds * 1e6);
      };
      host("raw all_to_all (grouped send/recv)", raw_a2a_timing);
      host("raw ncclAlltoAll", raw_alltoall);
      host("our all_to_all", ours_a2a_timing);
      host("cudaEventRecord", event_record);
      std::printf(
          "JSON {\"bytes\": %lld, \"all_reduce_busbw\": [%.2f, %.2f], "
          "\"all_reduce_started_busbw\": [%.2f, %.2f], \"all_to_all_busbw\": [%.2f, %.2f]}\n",
          static_cast<long long>(bytes), ar / ours_ar, ar / raw_ar, ar / ours_started_ar,
          ar / raw_ar, a2a / ours_a2a, a2a / raw_a2a);
    }
  }
  cudaStreamDestroy(side_stream);
  comm.reset();
  ncclCommDestroy(raw);
  MPI_Finalize();
  return 0;
}

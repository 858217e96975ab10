#include "parallel/nccl_communicator.hpp"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::sum ? ncclSum : ncclMax;
}

const char* bytes_of(const Tensor& t) {
  return static_cast<const char*>(t.raw());
}

char* bytes_of(Tensor& t) {
  return static_cast<char*>(t.raw());
}

void require_device(const Tensor& t, const char* what) {
  MM_ASSERT(t.device() == Device::cuda, what, ": NCCL moves GPU tensors, got a host tensor of ",
            shape_string(t.shape()));
}

void check_cuda(cudaError_t error, const char* call) {
  if (error != cudaSuccess) throw CommError(concat(call, " failed: ", cudaGetErrorString(error)));
}

class NcclRequest final : public CommRequest {
 public:
  NcclRequest(const NcclCommunicator& comm, const OperationLabel& what, cudaEvent_t done,
              std::vector<Tensor> keep_alive)
      : comm_(comm), what_(what), done_(done), keep_alive_(std::move(keep_alive)) {}
  ~NcclRequest() override {
    try {
      wait();
    } catch (const std::exception&) {
      // The watchdog already said why; a destructor has nowhere to send it.
    }
    if (done_ != nullptr) cudaEventDestroy(done_);
  }
  void wait() override {
    if (finished_) return;
    finished_ = true;
    // The compute stream now runs the tensors' next users after the operation, so their
    // storage may go back to the arena: every later use is ordered behind it.
    comm_.complete_on_compute_stream(done_, what_);
    done_ = nullptr;
    keep_alive_.clear();
  }
  bool test() override { return finished_ || cudaEventQuery(done_) == cudaSuccess; }

 private:
  const NcclCommunicator& comm_;
  OperationLabel what_;
  cudaEvent_t done_;
  std::vector<Tensor> keep_alive_;
  bool finished_ = false;
};

bool on_host(const Tensor& t) {
  return t.device() == Device::cpu;
}

// NCCL's one-call all-to-all (2.28.3 on): one enqueue instead of a group of 2p point-to-point
// calls, which at 1 MiB was host time the GPU waited for.
constexpr int kAllToAllVersion = 22803;

ncclResult_t call_all_to_all(const void* in, void* out, std::size_t each, ncclDataType_t type,
                             ncclComm_t comm, cudaStream_t stream) {
#if NCCL_VERSION_CODE >= 22803
  return ncclAlltoAll(in, out, each, type, comm, stream);
#else
  (void)in, (void)out, (void)each, (void)type, (void)comm, (void)stream;
  return ncclInvalidUsage;
#endif
}

}  // namespace

NcclCommunicator::NcclCommunicator(std::unique_ptr<MpiCommunicator> mpi,
                                   cudaStream_t compute_stream)
    : mpi_(std::move(mpi)), compute_stream_(compute_stream) {}

void NcclCommunicator::open(Lane& lane, const char* what, bool blocking) {
  ncclUniqueId id{};
  if (rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  if (const int rc = MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, mpi_->handle()); rc != MPI_SUCCESS)
    throw CommError(concat("broadcasting the NCCL id of communicator '", name(), "' (", what,
                           ") over MPI failed (code ", rc, ")"));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = blocking ? 1 : 0;
  const ncclResult_t result = locked("ncclCommInitRank", [&] {
    return ncclCommInitRankConfig(&lane.comm, size(), id, rank(), &config);
  });
  settle(result, "ncclCommInitRank", concat("initialisation (", what, ")"), lane);
  check_cuda(cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking), "cudaStreamCreate");
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(std::unique_ptr<MpiCommunicator> mpi,
                                                           cudaStream_t compute_stream) {
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(std::move(mpi), compute_stream));
  check_cuda(cudaGetDevice(&c->device_), "cudaGetDevice");
  // The library loaded may be older than the headers built against.
  int version = 0;
  c->has_all_to_all_ = NCCL_VERSION_CODE >= kAllToAllVersion &&
                       ncclGetVersion(&version) == ncclSuccess && version >= kAllToAllVersion;
  // The watchdog first: it bounds the host calls below.
  NcclCommunicator* self = c.get();
  c->watchdog_ = std::make_unique<NcclWatchdog>(
      c->mpi_->options().timeout_s,
      NcclWatchdog::Hooks{[self] { return self->lanes_async_error(); },
                          [self](const std::string& why) { self->on_watchdog_fault(why); }});
  // Point-to-point lanes are non-blocking: every call returns at once (ncclInProgress) and is
  // settled by polling, so a pipeline peer that has not posted its side yet cannot block the
  // host. Their messages are activations (megabytes), where the thread NCCL starts per
  // non-blocking launch costs nothing. Opening them first also shows every member alive.
  // A group of one has no peer to send to.
  if (c->size() > 1) {
    c->open(c->upward_, "messages to higher ranks", false);
    c->open(c->downward_, "messages to lower ranks", false);
  }
  // The collective lane is blocking: NCCL hands each non-blocking launch to a new thread, about
  // 10 us of host time per call, which halved the bus bandwidth of 1 MiB all-reduces (0.42-0.61 of
  // raw NCCL on two H200s). Its host calls run under the watchdog's deadline instead.
  c->open(c->collective_, "collectives", true);
  check_cuda(cudaEventCreateWithFlags(&c->compute_ready_, cudaEventDisableTiming),
             "cudaEventCreate");
  check_cuda(cudaEventCreateWithFlags(&c->lane_passed_, cudaEventDisableTiming), "cudaEventCreate");
  c->connect_collective_lane();
  return c;
}

void NcclCommunicator::connect_collective_lane() {
  // Here every member is present by construction; in a later call a missing peer would hold the
  // host inside NCCL until the watchdog ends the process. It also keeps the set-up out of the
  // first training step's time.
  constexpr std::size_t kFloats = 1024;
  void* buffer = nullptr;
  check_cuda(cudaMalloc(&buffer, kFloats * sizeof(float)), "cudaMalloc");
  cudaEvent_t done = nullptr;
  try {
    check_cuda(cudaMemsetAsync(buffer, 0, kFloats * sizeof(float), collective_.stream),
               "cudaMemsetAsync");
    settle(locked("ncclAllReduce",
                  [&] {
                    return ncclAllReduce(buffer, buffer, kFloats, ncclFloat32, ncclSum,
                                         collective_.comm, collective_.stream);
                  }),
           "ncclAllReduce", "connecting the collective lane");
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(done, collective_.stream), "cudaEventRecord");
    wait_event(done, "connecting the collective lane");
  } catch (...) {
    if (done != nullptr) cudaEventDestroy(done);
    cudaFree(buffer);
    throw;
  }
  cudaEventDestroy(done);
  cudaFree(buffer);
}

NcclCommunicator::~NcclCommunicator() {
  // After an abort a stream may still hold the kernel of the operation that never completed:
  // waiting on it (or destroying the stream) could hang the exit this abort exists to allow.
  if (aborted() || watchdog_fault_) {
    watchdog_.reset();
    return;
  }
  try {
    synchronize();
    // Nothing is pending, so the watchdog no longer queries the lanes; it bounds the finalising
    // calls (a blocking lane's waits for its peers) and stops before the lanes go.
    for (Lane* lane : {&collective_, &upward_, &downward_})
      if (lane->comm != nullptr)
        settle(locked("ncclCommFinalize", [&] { return ncclCommFinalize(lane->comm); }),
               "ncclCommFinalize", "finalisation", *lane);
  } catch (const std::exception&) {
    watchdog_.reset();
    return;  // fail() said why and aborted the communicator
  }
  watchdog_.reset();
  for (Lane* lane : {&collective_, &upward_, &downward_}) {
    if (lane->comm == nullptr) continue;
    ncclCommDestroy(lane->comm);
    cudaStreamDestroy(lane->stream);
  }
  if (compute_ready_ != nullptr) cudaEventDestroy(compute_ready_);
  if (lane_passed_ != nullptr) cudaEventDestroy(lane_passed_);
}

std::unique_ptr<Communicator> NcclCommunicator::subgroup(const std::vector<int>& members,
                                                         const std::string& name) {
  auto mpi = MpiCommunicator::from_members(mpi_->handle(), members, name, mpi_->options());
  return create(std::move(mpi), compute_stream_);
}

void NcclCommunicator::check(ncclResult_t result, const char* call) const {
  if (result != ncclSuccess && result != ncclInProgress)
    throw CommError(concat(call, " on communicator '", name(), "' (rank ", rank(), " of ", size(),
                           ") failed: ", ncclGetErrorString(result)));
}

void NcclCommunicator::abort_lanes() const {
  const std::lock_guard lock(lanes_mutex_);
  for (Lane* lane : {&collective_, &upward_, &downward_}) {
    if (lane->comm != nullptr) ncclCommAbort(lane->comm);
    lane->comm = nullptr;
  }
}

std::string NcclCommunicator::lanes_async_error() const {
  // The owner may be inside a blocking NCCL call (holding the lock): then look next time, so the
  // watchdog thread keeps checking its deadlines.
  const std::unique_lock lock(lanes_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return {};
  for (const Lane* lane : {&collective_, &upward_, &downward_}) {
    if (lane->comm == nullptr) continue;
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(lane->comm, &async);
    if (async != ncclSuccess && async != ncclInProgress)
      return concat("NCCL error ", ncclGetErrorString(async));
  }
  return {};
}

void NcclCommunicator::on_watchdog_fault(const std::string& why) const {
  const std::string line =
      concat("rank ", mpi_->rank(), " of communicator '", name(), "', size ", size(), ": ", why);
  // A host call that never returned holds the lanes' lock and the only thread that could report
  // it: nothing but ending the process can follow, in tests too.
  const bool host_blocked = why.rfind(NcclWatchdog::kHostCallPrefix, 0) == 0;
  if (mpi_->options().abort_on_timeout || host_blocked) {
    // The main thread may be blocked on the GPU (a copy behind the hung operation) or inside a
    // blocking NCCL call (holding the lanes' lock): end the process from here, aborting the lanes
    // only if the lock comes free soon; mpirun then ends the job.
    std::cerr << "metamorph: error: " << line << std::endl;
    const auto give_up = Clock::now() + std::chrono::seconds(1);
    while (!host_blocked && Clock::now() < give_up) {
      std::unique_lock lock(lanes_mutex_, std::try_to_lock);
      if (!lock.owns_lock()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      for (Lane* lane : {&collective_, &upward_, &downward_})
        if (lane->comm != nullptr) ncclCommAbort(lane->comm);
      break;
    }
    std::_Exit(3);
  }
  {
    const std::lock_guard lock(reason_mutex_);
    watchdog_reason_ = line;
  }
  watchdog_fault_ = true;
}

void NcclCommunicator::check_healthy() const {
  if (!watchdog_fault_) return;
  std::string reason;
  {
    const std::lock_guard lock(reason_mutex_);
    reason = watchdog_reason_;
  }
  abort_lanes();
  throw CommError(reason);
}

void NcclCommunicator::abort() {
  abort_lanes();
}

void NcclCommunicator::fail(const std::string& why) const {
  // Aborting frees the GPU-side state so a retry, or the process exit, cannot hang on it.
  abort_lanes();
  const std::string line =
      concat("rank ", mpi_->rank(), " of communicator '", name(), "', size ", size(), ": ", why);
  if (mpi_->options().abort_on_timeout) {
    std::cerr << "metamorph: error: " << line << std::endl;
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  throw CommError(line);
}

void NcclCommunicator::settle(ncclResult_t result, const char* call, const std::string& what,
                              const Lane& lane) const {
  check(result, call);
  if (result != ncclInProgress) return;
  const auto deadline = Clock::now() + std::chrono::duration<double>(mpi_->options().timeout_s);
  for (;;) {
    check_healthy();
    ncclResult_t state = ncclInProgress;
    if (lane.comm == nullptr)
      fail(concat(what, ": the communicator was aborted by an earlier error"));
    locked("ncclCommGetAsyncError", [&] { return ncclCommGetAsyncError(lane.comm, &state); });
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) fail(concat(what, ": ", call, ": ", ncclGetErrorString(state)));
    if (Clock::now() > deadline)
      fail(concat(what, " (", call, ") did not complete within ", mpi_->options().timeout_s, " s"));
    std::this_thread::yield();
  }
}

void NcclCommunicator::wait_event(cudaEvent_t done, const std::string& what) const {
  const auto deadline = Clock::now() + std::chrono::duration<double>(mpi_->options().timeout_s);
  for (;;) {
    check_healthy();
    const cudaError_t state = cudaEventQuery(done);
    if (state == cudaSuccess) return;
    if (state != cudaErrorNotReady) fail(concat(what, ": CUDA error ", cudaGetErrorString(state)));
    if (aborted()) fail(concat(what, ": the communicator was aborted by an earlier error"));
    // A peer's failure surfaces on whichever lane talks to it.
    if (const std::string error = lanes_async_error(); !error.empty())
      fail(concat(what, ": ", error));
    if (Clock::now() > deadline)
      fail(concat(what, " did not complete within ", mpi_->options().timeout_s, " s"));
    std::this_thread::yield();
  }
}

void NcclCommunicator::complete_on_compute_stream(cudaEvent_t done,
                                                  const OperationLabel& what) const {
  check_healthy();
  check_cuda(cudaStreamWaitEvent(compute_stream_, done, 0), "cudaStreamWaitEvent");
  watchdog_->watch(done, what);
}

void NcclCommunicator::synchronize() {
  std::vector<cudaStream_t> streams;
  for (const Lane* lane : {&collective_, &upward_, &downward_})
    if (lane->comm != nullptr) streams.push_back(lane->stream);
  // The blocking collectives ran on the compute stream.
  if (collective_.comm != nullptr) streams.push_back(compute_stream_);
  for (cudaStream_t stream : streams) {
    cudaEvent_t done = nullptr;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(done, stream), "cudaEventRecord");
    try {
      wait_event(done, "synchronize");
    } catch (...) {
      cudaEventDestroy(done);
      throw;
    }
    cudaEventDestroy(done);
  }
}

void NcclCommunicator::after_compute(Lane& lane) const {
  check_healthy();
  check_cuda(cudaEventRecord(compute_ready_, compute_stream_), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(lane.stream, compute_ready_, 0), "cudaStreamWaitEvent");
  lane.ahead_of_compute = true;
}

void NcclCommunicator::after_collective_lane() {
  check_healthy();
  if (!collective_.ahead_of_compute) return;
  check_cuda(cudaEventRecord(lane_passed_, collective_.stream), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(compute_stream_, lane_passed_, 0), "cudaStreamWaitEvent");
  collective_.ahead_of_compute = false;
}

void NcclCommunicator::watch_compute_stream(const OperationLabel& what) {
  cudaEvent_t done = watchdog_->take_event();
  check_cuda(cudaEventRecord(done, compute_stream_), "cudaEventRecord");
  watchdog_->watch(done, what);
}

std::unique_ptr<CommRequest> NcclCommunicator::finish(const Lane& lane, const OperationLabel& what,
                                                      std::vector<Tensor> tensors) {
  cudaEvent_t done = watchdog_->take_event();
  check_cuda(cudaEventRecord(done, lane.stream), "cudaEventRecord");
  return std::make_unique<NcclRequest>(*this, what, done, std::move(tensors));
}

NcclCommunicator::Lane& NcclCommunicator::p2p_lane(int peer, bool sending) {
  const bool upward = sending ? peer > rank() : peer < rank();
  return upward ? upward_ : downward_;
}

void NcclCommunicator::enqueue_all_reduce(Tensor& x, ReduceOp op, cudaStream_t stream) {
  settle(locked("ncclAllReduce",
                [&] {
                  return ncclAllReduce(x.raw(), x.raw(), static_cast<std::size_t>(x.numel()),
                                       nccl_type(x.dtype()), nccl_op(op), collective_.comm, stream);
                }),
         "ncclAllReduce", "all_reduce");
}

std::unique_ptr<CommRequest> NcclCommunicator::do_start_all_reduce(Tensor& x, ReduceOp op) {
  if (on_host(x)) return mpi_->start_all_reduce(x, op);
  after_compute(collective_);
  enqueue_all_reduce(x, op, collective_.stream);
  return finish(collective_, OperationLabel{"all_reduce", x.numel()}, {x});
}

void NcclCommunicator::do_all_reduce(Tensor& x, ReduceOp op) {
  if (on_host(x)) return mpi_->all_reduce(x, op);
  after_collective_lane();
  enqueue_all_reduce(x, op, compute_stream_);
  watch_compute_stream(OperationLabel{"all_reduce", x.numel()});
}

void NcclCommunicator::enqueue_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op,
                                              cudaStream_t stream) {
  require_device(in, "reduce_scatter");
  require_device(out, "reduce_scatter");
  settle(locked("ncclReduceScatter",
                [&] {
                  return ncclReduceScatter(
                      in.raw(), out.raw(), static_cast<std::size_t>(out.numel()),
                      nccl_type(in.dtype()), nccl_op(op), collective_.comm, stream);
                }),
         "ncclReduceScatter", "reduce_scatter");
}

std::unique_ptr<CommRequest> NcclCommunicator::do_start_reduce_scatter(const Tensor& in,
                                                                       Tensor& out, ReduceOp op) {
  if (on_host(in) && on_host(out)) return mpi_->start_reduce_scatter(in, out, op);
  after_compute(collective_);
  enqueue_reduce_scatter(in, out, op, collective_.stream);
  return finish(collective_, OperationLabel{"reduce_scatter", in.numel()}, {in, out});
}

void NcclCommunicator::do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  if (on_host(in) && on_host(out)) return mpi_->reduce_scatter(in, out, op);
  after_collective_lane();
  enqueue_reduce_scatter(in, out, op, compute_stream_);
  watch_compute_stream(OperationLabel{"reduce_scatter", in.numel()});
}

void NcclCommunicator::enqueue_all_gather(const Tensor& in, Tensor& out, cudaStream_t stream) {
  require_device(in, "all_gather");
  require_device(out, "all_gather");
  settle(locked("ncclAllGather",
                [&] {
                  return ncclAllGather(in.raw(), out.raw(), static_cast<std::size_t>(in.numel()),
                                       nccl_type(in.dtype()), collective_.comm, stream);
                }),
         "ncclAllGather", "all_gather");
}

std::unique_ptr<CommRequest> NcclCommunicator::do_start_all_gather(const Tensor& in, Tensor& out) {
  if (on_host(in) && on_host(out)) return mpi_->start_all_gather(in, out);
  after_compute(collective_);
  enqueue_all_gather(in, out, collective_.stream);
  return finish(collective_, OperationLabel{"all_gather", in.numel()}, {in, out});
}

void NcclCommunicator::do_all_gather(const Tensor& in, Tensor& out) {
  if (on_host(in) && on_host(out)) return mpi_->all_gather(in, out);
  after_collective_lane();
  enqueue_all_gather(in, out, compute_stream_);
  watch_compute_stream(OperationLabel{"all_gather", in.numel()});
}

void NcclCommunicator::do_all_to_all(const Tensor& in, Tensor& out) {
  if (on_host(in) && on_host(out)) return mpi_->all_to_all(in, out);
  if (!has_all_to_all_) {
    const std::vector<std::int64_t> counts(static_cast<std::size_t>(size()), in.numel() / size());
    return do_all_to_all_v(in, counts, out, counts);
  }
  require_device(in, "all_to_all");
  require_device(out, "all_to_all");
  after_collective_lane();
  const auto each = static_cast<std::size_t>(in.numel() / size());
  settle(locked("ncclAlltoAll",
                [&] {
                  return call_all_to_all(in.raw(), out.raw(), each, nccl_type(in.dtype()),
                                         collective_.comm, compute_stream_);
                }),
         "ncclAlltoAll", "all_to_all");
  watch_compute_stream(OperationLabel{"all_to_all", in.numel()});
}

std::size_t NcclCommunicator::enqueue_all_to_all_v(const Tensor& in,
                                                   const std::vector<std::int64_t>& send_counts,
                                                   Tensor& out,
                                                   const std::vector<std::int64_t>& recv_counts,
                                                   cudaStream_t stream) {
  require_device(in, "all_to_all");
  require_device(out, "all_to_all");
  const std::size_t element = dtype_size(in.dtype());
  const ncclDataType_t type = nccl_type(in.dtype());
  // Grouped point-to-point: NCCL schedules the p sends and p receives together.
  ncclResult_t grouped = ncclSuccess;
  std::size_t sent = 0, received = 0;
  {
    // The whole group under the lock: the watchdog must not complete it half-built.
    const NcclWatchdog::HostCall guard(*watchdog_, "ncclGroupEnd (all_to_all)");
    const std::lock_guard lock(lanes_mutex_);
    check(ncclGroupStart(), "ncclGroupStart");
    for (int peer = 0; peer < size(); ++peer) {
      const auto s = static_cast<std::size_t>(send_counts[static_cast<std::size_t>(peer)]);
      const auto r = static_cast<std::size_t>(recv_counts[static_cast<std::size_t>(peer)]);
      if (s > 0)
        check(ncclSend(bytes_of(in) + sent * element, s, type, peer, collective_.comm, stream),
              "ncclSend");
      if (r > 0)
        check(ncclRecv(bytes_of(out) + received * element, r, type, peer, collective_.comm, stream),
              "ncclRecv");
      sent += s;
      received += r;
    }
    grouped = ncclGroupEnd();
  }
  settle(grouped, "ncclGroupEnd", "all_to_all");
  return sent;
}

void NcclCommunicator::do_all_to_all_v(const Tensor& in,
                                       const std::vector<std::int64_t>& send_counts, Tensor& out,
                                       const std::vector<std::int64_t>& recv_counts) {
  if (on_host(in) && on_host(out))
    return do_start_all_to_all_v(in, send_counts, out, recv_counts)->wait();
  after_collective_lane();
  const std::size_t sent = enqueue_all_to_all_v(in, send_counts, out, recv_counts, compute_stream_);
  watch_compute_stream(OperationLabel{"all_to_all", static_cast<std::int64_t>(sent)});
}

std::unique_ptr<CommRequest> NcclCommunicator::do_start_all_to_all_v(
    const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
    const std::vector<std::int64_t>& recv_counts) {
  if (on_host(in) && on_host(out)) {
    // Flat views make the element counts row counts.
    Tensor flat_out = out.view({out.numel()});
    return mpi_->start_all_to_all_v(in.view({in.numel()}), send_counts, flat_out, recv_counts);
  }
  after_compute(collective_);
  const std::size_t sent =
      enqueue_all_to_all_v(in, send_counts, out, recv_counts, collective_.stream);
  return finish(collective_, OperationLabel{"all_to_all", static_cast<std::int64_t>(sent)},
                {in, out});
}

void NcclCommunicator::do_broadcast(Tensor& x, int root) {
  if (on_host(x)) return mpi_->broadcast(x, root);
  after_collective_lane();
  settle(locked("ncclBroadcast",
                [&] {
                  return ncclBroadcast(x.raw(), x.raw(), static_cast<std::size_t>(x.numel()),
                                       nccl_type(x.dtype()), root, collective_.comm,
                                       compute_stream_);
                }),
         "ncclBroadcast", "broadcast");
  watch_compute_stream(OperationLabel{"broadcast", x.numel(), " from rank ", root});
}

// NCCL has no tags: messages between two ranks match in the order they are posted, which the
// pipeline schedule keeps the same on both sides within each direction.
std::unique_ptr<CommRequest> NcclCommunicator::do_start_send(const Tensor& x, int dst, int tag) {
  if (on_host(x)) return mpi_->start_send(x, dst, tag);
  Lane& lane = p2p_lane(dst, true);
  after_compute(lane);
  settle(locked("ncclSend",
                [&] {
                  return ncclSend(x.raw(), static_cast<std::size_t>(x.numel()),
                                  nccl_type(x.dtype()), dst, lane.comm, lane.stream);
                }),
         "ncclSend", "send", lane);
  return finish(lane, OperationLabel{"send", x.numel(), " to rank ", dst}, {x});
}

std::unique_ptr<CommRequest> NcclCommunicator::do_start_recv(Tensor& x, int src, int tag) {
  if (on_host(x)) return mpi_->start_recv(x, src, tag);
  Lane& lane = p2p_lane(src, false);
  after_compute(lane);
  settle(locked("ncclRecv",
                [&] {
                  return ncclRecv(x.raw(), static_cast<std::size_t>(x.numel()),
                                  nccl_type(x.dtype()), src, lane.comm, lane.stream);
                }),
         "ncclRecv", "recv", lane);
  return finish(lane, OperationLabel{"recv", x.numel(), " from rank ", src}, {x});
}

void NcclCommunicator::do_barrier() {
  // Everything this rank queued has completed, and every member got here.
  synchronize();
  mpi_->barrier();
}

void NcclCommunicator::host_max(std::vector<std::int64_t>& values) {
  std::vector<MPI_Request> request(1);
  if (const int rc = MPI_Iallreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()),
                                    MPI_INT64_T, MPI_MAX, mpi_->handle(), request.data());
      rc != MPI_SUCCESS)
    throw CommError(concat("MPI_Iallreduce on communicator '", name(), "' failed (code ", rc, ")"));
  mpi_->wait_all(request, "host all_reduce (max)");
}

std::vector<std::int64_t> NcclCommunicator::host_all_to_all(
    const std::vector<std::int64_t>& counts) {
  std::vector<std::int64_t> received(counts.size());
  std::vector<MPI_Request> request(1);
  if (const int rc = MPI_Ialltoall(counts.data(), 1, MPI_INT64_T, received.data(), 1, MPI_INT64_T,
                                   mpi_->handle(), request.data());
      rc != MPI_SUCCESS)
    throw CommError(concat("MPI_Ialltoall on communicator '", name(), "' failed (code ", rc, ")"));
  mpi_->wait_all(request, "host all_to_all of counts");
  return received;
}

}  // namespace metamorph

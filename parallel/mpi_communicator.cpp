#include "parallel/mpi_communicator.hpp"

#include <chrono>
#include <climits>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

using Clock = std::chrono::steady_clock;

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::bf16:
      return MPI_UINT16_T;  // moved as raw bits, never reduced
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  return op == ReduceOp::sum ? MPI_SUM : MPI_MAX;
}

int to_int(std::int64_t count, const char* what) {
  MM_ASSERT(count >= 0 && count <= INT_MAX, what, " count ", count,
            " exceeds MPI's int range; split the tensor");
  return static_cast<int>(count);
}

// The largest piece an MPI call takes at once; bigger buffers go as several requests.
constexpr std::int64_t kMaxPiece = INT_MAX / 2;

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// A set of MPI requests plus the tensors whose storage they use.
class MpiRequest final : public CommRequest {
 public:
  MpiRequest(const MpiCommunicator& comm, std::string what, std::vector<MPI_Request> requests,
             std::vector<Tensor> keep_alive)
      : comm_(comm),
        what_(std::move(what)),
        requests_(std::move(requests)),
        keep_alive_(std::move(keep_alive)) {}
  ~MpiRequest() override {
    try {
      wait();
    } catch (const std::exception&) {
      // The watchdog already said why; a destructor has nowhere to send it.
    }
  }
  void wait() override {
    if (done_) return;
    done_ = true;
    comm_.wait_all(requests_, what_);
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag, MPI_STATUSES_IGNORE);
    return flag != 0;
  }

 private:
  const MpiCommunicator& comm_;
  std::string what_;
  std::vector<MPI_Request> requests_;
  std::vector<Tensor> keep_alive_;
  bool done_ = false;
};

}  // namespace

MpiOptions MpiOptions::from_environment() {
  MpiOptions options;
  if (const char* env = std::getenv("METAMORPH_COMM_TIMEOUT"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const double value = std::strtod(env, &end);
    require(end != env && *end == '\0' && value > 0, "METAMORPH_COMM_TIMEOUT='", env,
            "' must be a positive number of seconds");
    options.timeout_s = value;
  }
  if (const char* env = std::getenv("METAMORPH_COMM_CHECKS"); env != nullptr && *env != '\0') {
    const std::string value = env;
    require(value == "0" || value == "1", "METAMORPH_COMM_CHECKS='", value, "' must be 0 or 1");
    options.size_checks = value == "1";
  }
  return options;
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, const std::string& name, const MpiOptions& options)
    : comm_(comm), name_(name), options_(options) {
  check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::duplicate(MPI_Comm parent,
                                                            const std::string& name,
                                                            const MpiOptions& options) {
  MPI_Comm_set_errhandler(parent, MPI_ERRORS_RETURN);
  MPI_Comm comm = MPI_COMM_NULL;
  if (const int rc = MPI_Comm_dup(parent, &comm); rc != MPI_SUCCESS)
    throw CommError(concat("MPI_Comm_dup for communicator '", name, "' failed (code ", rc, ")"));
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(comm, name, options));
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::from_members(MPI_Comm parent,
                                                               const std::vector<int>& members,
                                                               const std::string& name,
                                                               const MpiOptions& options) {
  MM_ASSERT(!members.empty(), "communicator '", name, "' without members");
  MPI_Group parent_group = MPI_GROUP_NULL, group = MPI_GROUP_NULL;
  MPI_Comm_group(parent, &parent_group);
  MPI_Group_incl(parent_group, static_cast<int>(members.size()), members.data(), &group);
  // Members of one group share the tag; groups that share a rank get different tags, so
  // creations of overlapping groups cannot match each other's messages.
  unsigned tag = 17;
  for (int m : members) tag = tag * 31u + static_cast<unsigned>(m) + 1u;
  MPI_Comm comm = MPI_COMM_NULL;
  const int rc = MPI_Comm_create_group(parent, group, static_cast<int>(tag % 32000u), &comm);
  MPI_Group_free(&group);
  MPI_Group_free(&parent_group);
  if (rc != MPI_SUCCESS || comm == MPI_COMM_NULL)
    throw CommError(concat("MPI_Comm_create_group for communicator '", name, "' failed (code ", rc,
                           "); is this rank one of its members?"));
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(comm, name, options));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<Communicator> MpiCommunicator::subgroup(const std::vector<int>& members,
                                                        const std::string& name) {
  for (int m : members)
    MM_ASSERT(m >= 0 && m < size_, "member ", m, " of '", name, "' outside '", name_, "' of size ",
              size_);
  return from_members(comm_, members, name, options_);
}

void MpiCommunicator::check(int rc, const char* call) const {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw CommError(concat(call, " on communicator '", name_, "' (rank ", rank_, " of ", size_,
                         ", world rank ", world_rank(), ") failed: ", std::string(text, length)));
}

void MpiCommunicator::on_timeout(const std::string& what) const {
  const std::string message =
      concat("metamorph: error: rank ", world_rank(), " (rank ", rank_, " of communicator '", name_,
             "', size ", size_, "): ", what, " did not complete within ", options_.timeout_s,
             " s; a peer rank has died or stopped responding (METAMORPH_COMM_TIMEOUT sets the "
             "limit)");
  if (!options_.abort_on_timeout) throw CommError(message);
  std::cerr << message << std::endl;
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::_Exit(3);  // MPI_Abort does not return; this keeps [[noreturn]] honest if it does
}

void MpiCommunicator::wait_all(std::vector<MPI_Request>& requests, const std::string& what) const {
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(options_.timeout_s));
  // Spin briefly for latency, then yield, then sleep: ranks oversubscribed on few cores must
  // leave the CPU to the peers they wait for.
  for (long polls = 0;; ++polls) {
    int flag = 0;
    check(
        MPI_Testall(static_cast<int>(requests.size()), requests.data(), &flag, MPI_STATUSES_IGNORE),
        what.c_str());
    if (flag) return;
    const auto now = Clock::now();
    if (now > deadline) on_timeout(what);
    if (polls < 200) continue;
    if (now - start < std::chrono::milliseconds(5))
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void MpiCommunicator::run(const std::string& what, MPI_Request request) const {
  std::vector<MPI_Request> requests = {request};
  wait_all(requests, what);
}

std::unique_ptr<CommRequest> MpiCommunicator::do_start_all_reduce(Tensor& x, ReduceOp op) {
  std::vector<MPI_Request> requests;
  auto* base = static_cast<char*>(x.raw());
  const std::size_t element = dtype_size(x.dtype());
  for (std::int64_t begin = 0; begin < x.numel() || (begin == 0 && requests.empty());
       begin += kMaxPiece) {
    const std::int64_t n = std::min(kMaxPiece, x.numel() - begin);
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, base + static_cast<std::size_t>(begin) * element,
                         static_cast<int>(n), mpi_type(x.dtype()), mpi_op(op), comm_, &request),
          "MPI_Iallreduce");
    requests.push_back(request);
  }
  return std::make_unique<MpiRequest>(*this, concat("all_reduce of ", x.numel(), " elements"),
                                      std::move(requests), std::vector<Tensor>{x});
}

std::unique_ptr<CommRequest> MpiCommunicator::do_start_reduce_scatter(const Tensor& in, Tensor& out,
                                                                      ReduceOp op) {
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ireduce_scatter_block(in.raw(), out.raw(), to_int(out.numel(), "reduce_scatter"),
                                  mpi_type(in.dtype()), mpi_op(op), comm_, &request),
        "MPI_Ireduce_scatter_block");
  return std::make_unique<MpiRequest>(*this, concat("reduce_scatter of ", in.numel(), " elements"),
                                      std::vector<MPI_Request>{request},
                                      std::vector<Tensor>{in, out});
}

std::unique_ptr<CommRequest> MpiCommunicator::do_start_all_gather(const Tensor& in, Tensor& out) {
  MPI_Request request = MPI_REQUEST_NULL;
  const int n = to_int(in.numel(), "all_gather");
  check(MPI_Iallgather(in.raw(), n, mpi_type(in.dtype()), out.raw(), n, mpi_type(out.dtype()),
                       comm_, &request),
        "MPI_Iallgather");
  return std::make_unique<MpiRequest>(*this, concat("all_gather of ", out.numel(), " elements"),
                                      std::vector<MPI_Request>{request},
                                      std::vector<Tensor>{in, out});
}

void MpiCommunicator::do_all_to_all(const Tensor& in, Tensor& out) {
  MPI_Request request = MPI_REQUEST_NULL;
  const int n = to_int(in.numel() / size_, "all_to_all");
  check(MPI_Ialltoall(in.raw(), n, mpi_type(in.dtype()), out.raw(), n, mpi_type(out.dtype()), comm_,
                      &request),
        "MPI_Ialltoall");
  run(concat("all_to_all of ", in.numel(), " elements"), request);
}

void MpiCommunicator::do_all_to_all_v(const Tensor& in,
                                      const std::vector<std::int64_t>& send_counts, Tensor& out,
                                      const std::vector<std::int64_t>& recv_counts) {
  do_start_all_to_all_v(in, send_counts, out, recv_counts)->wait();
}

std::unique_ptr<CommRequest> MpiCommunicator::do_start_all_to_all_v(
    const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
    const std::vector<std::int64_t>& recv_counts) {
  const auto p = static_cast<std::size_t>(size_);
  std::vector<int> sc(p), sd(p), rc(p), rd(p);
  std::int64_t send_offset = 0, recv_offset = 0;
  for (std::size_t i = 0; i < p; ++i) {
    sc[i] = to_int(send_counts[i], "all_to_all_v");
    rc[i] = to_int(recv_counts[i], "all_to_all_v");
    sd[i] = to_int(send_offset, "all_to_all_v displacement");
    rd[i] = to_int(recv_offset, "all_to_all_v displacement");
    send_offset += send_counts[i];
    recv_offset += recv_counts[i];
  }
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ialltoallv(in.raw(), sc.data(), sd.data(), mpi_type(in.dtype()), out.raw(), rc.data(),
                       rd.data(), mpi_type(out.dtype()), comm_, &request),
        "MPI_Ialltoallv");
  return std::make_unique<MpiRequest>(
      *this, concat("all_to_all_v of ", send_offset, " elements out, ", recv_offset, " in"),
      std::vector<MPI_Request>{request}, std::vector<Tensor>{in, out});
}

void MpiCommunicator::do_broadcast(Tensor& x, int root) {
  std::vector<MPI_Request> requests;
  auto* base = static_cast<char*>(x.raw());
  const std::size_t element = dtype_size(x.dtype());
  for (std::int64_t begin = 0; begin < x.numel(); begin += kMaxPiece) {
    const std::int64_t n = std::min(kMaxPiece, x.numel() - begin);
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibcast(base + static_cast<std::size_t>(begin) * element, static_cast<int>(n),
                     mpi_type(x.dtype()), root, comm_, &request),
          "MPI_Ibcast");
    requests.push_back(request);
  }
  wait_all(requests, concat("broadcast of ", x.numel(), " elements from rank ", root));
}

std::unique_ptr<CommRequest> MpiCommunicator::do_start_send(const Tensor& x, int dst, int tag) {
  std::vector<MPI_Request> requests;
  const auto* base = static_cast<const char*>(x.raw());
  const std::size_t element = dtype_size(x.dtype());
  for (std::int64_t begin = 0; begin < x.numel() || requests.empty(); begin += kMaxPiece) {
    const std::int64_t n = std::min(kMaxPiece, x.numel() - begin);
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Isend(base + static_cast<std::size_t>(begin) * element, static_cast<int>(n),
                    mpi_type(x.dtype()), dst, tag, comm_, &request),
          "MPI_Isend");
    requests.push_back(request);
  }
  return std::make_unique<MpiRequest>(
      *this, concat("send of ", x.numel(), " elements to rank ", dst, " (tag ", tag, ")"),
      std::move(requests), std::vector<Tensor>{x});
}

std::unique_ptr<CommRequest> MpiCommunicator::do_start_recv(Tensor& x, int src, int tag) {
  std::vector<MPI_Request> requests;
  auto* base = static_cast<char*>(x.raw());
  const std::size_t element = dtype_size(x.dtype());
  for (std::int64_t begin = 0; begin < x.numel() || requests.empty(); begin += kMaxPiece) {
    const std::int64_t n = std::min(kMaxPiece, x.numel() - begin);
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Irecv(base + static_cast<std::size_t>(begin) * element, static_cast<int>(n),
                    mpi_type(x.dtype()), src, tag, comm_, &request),
          "MPI_Irecv");
    requests.push_back(request);
  }
  return std::make_unique<MpiRequest>(
      *this, concat("recv of ", x.numel(), " elements from rank ", src, " (tag ", tag, ")"),
      std::move(requests), std::vector<Tensor>{x});
}

void MpiCommunicator::do_barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ibarrier(comm_, &request), "MPI_Ibarrier");
  run("barrier", request);
}

}  // namespace metamorph

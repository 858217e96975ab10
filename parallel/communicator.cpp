#include "parallel/communicator.hpp"

#include <numeric>

#include "runtime/core/error.hpp"

namespace metamorph {

std::string comm_op_name(CommOp op) {
  switch (op) {
    case CommOp::all_reduce:
      return "all_reduce";
    case CommOp::reduce_scatter:
      return "reduce_scatter";
    case CommOp::all_gather:
      return "all_gather";
    case CommOp::all_to_all:
      return "all_to_all";
    case CommOp::all_to_all_v:
      return "all_to_all_v";
    case CommOp::exchange_counts:
      return "exchange_counts";
    case CommOp::broadcast:
      return "broadcast";
    case CommOp::send:
      return "send";
    case CommOp::barrier:
      return "barrier";
  }
  return "?";
}

std::uint64_t CommCounters::total_bytes() const {
  return std::accumulate(bytes.begin(), bytes.end(), std::uint64_t{0});
}

std::uint64_t convention_bytes(CommOp op, std::uint64_t bytes, int p) {
  MM_ASSERT(p >= 1, "group size ", p);
  const auto q = static_cast<std::uint64_t>(p);
  if (p == 1 && op != CommOp::send) return 0;
  switch (op) {
    case CommOp::all_reduce:
      return 2 * (q - 1) * bytes / q;
    case CommOp::reduce_scatter:
    case CommOp::all_gather:
    case CommOp::all_to_all:
    case CommOp::exchange_counts:
      return (q - 1) * bytes / q;
    case CommOp::all_to_all_v:  // the caller passes the bytes bound for other ranks
    case CommOp::broadcast:
    case CommOp::send:
      return bytes;
    case CommOp::barrier:
      return 0;
  }
  return 0;
}

namespace {

// Elements per row of dim 0, from the shape: a tensor with no rows still has a width.
std::int64_t row_width(const Tensor& t) {
  std::int64_t width = 1;
  for (int d = 1; d < t.rank(); ++d) width *= t.dim(d);
  return width;
}

}  // namespace

void Communicator::count(CommOp op, std::uint64_t bytes) {
  const auto i = static_cast<std::size_t>(op);
  counters_.bytes[i] += convention_bytes(op, bytes, size());
  counters_.calls[i] += 1;
}

void Communicator::check_peer(int peer, const char* what) const {
  MM_ASSERT(peer >= 0 && peer < size(), what, " rank ", peer, " outside communicator '", name(),
            "' of size ", size());
}

void Communicator::check_same_size(CommOp op, std::int64_t numel, DType dtype) {
  if (!size_checks() || size() == 1) return;
  const auto d = static_cast<std::int64_t>(dtype);
  std::vector<std::int64_t> v = {numel, -numel, d, -d};
  host_max(v);
  if (v[0] != -v[1] || v[2] != -v[3])
    throw std::logic_error(
        concat(comm_op_name(op), " on communicator '", name(), "': members pass different sizes (",
               -v[1], " to ", v[0], " elements, dtypes ", dtype_name(static_cast<DType>(-v[3])),
               " to ", dtype_name(static_cast<DType>(v[2])), "); every member must pass the same"));
}

void Communicator::host_max(std::vector<std::int64_t>& values) {
  Arena arena;
  Tensor t = Tensor::empty({static_cast<std::int64_t>(values.size())}, DType::i64, arena);
  std::copy(values.begin(), values.end(), t.data<std::int64_t>());
  do_start_all_reduce(t, ReduceOp::max)->wait();
  std::copy(t.data<std::int64_t>(), t.data<std::int64_t>() + values.size(), values.begin());
}

void Communicator::check_counts_match(const std::vector<std::int64_t>& send_rows,
                                      const std::vector<std::int64_t>& recv_rows) {
  if (!size_checks() || size() == 1) return;
  // Checks are not the algorithm: they stay out of the byte counters.
  const std::vector<std::int64_t> expected = host_all_to_all(send_rows);
  int bad_peer = -1;
  for (int i = 0; i < size(); ++i)
    if (expected[static_cast<std::size_t>(i)] != recv_rows[static_cast<std::size_t>(i)])
      bad_peer = i;
  std::vector<std::int64_t> flag = {bad_peer >= 0 ? 1 : 0};
  host_max(flag);
  if (flag[0] != 0)
    throw std::logic_error(concat(
        "all_to_all_v on communicator '", name(), "': receive counts disagree with what peers send",
        bad_peer >= 0
            ? concat(" (rank ", rank(), " expects ", recv_rows[static_cast<std::size_t>(bad_peer)],
                     " rows from rank ", bad_peer, ", which sends ",
                     expected[static_cast<std::size_t>(bad_peer)], ")")
            : std::string(" on another rank")));
}

void Communicator::prepare_all_reduce(const Tensor& x) {
  MM_ASSERT(reduces(x.dtype()), "all_reduce of a ", dtype_name(x.dtype()), " tensor");
  check_same_size(CommOp::all_reduce, x.numel(), x.dtype());
  count(CommOp::all_reduce, x.bytes());
}

void Communicator::all_reduce(Tensor& x, ReduceOp op) {
  prepare_all_reduce(x);
  do_all_reduce(x, op);
}

std::unique_ptr<CommRequest> Communicator::start_all_reduce(Tensor& x, ReduceOp op) {
  prepare_all_reduce(x);
  return do_start_all_reduce(x, op);
}

void Communicator::do_all_reduce(Tensor& x, ReduceOp op) {
  do_start_all_reduce(x, op)->wait();
}

void Communicator::prepare_reduce_scatter(const Tensor& in, const Tensor& out) {
  MM_ASSERT(reduces(in.dtype()) && in.dtype() == out.dtype(), "reduce_scatter of ",
            dtype_name(in.dtype()), " into ", dtype_name(out.dtype()));
  MM_ASSERT(in.numel() == out.numel() * size(), "reduce_scatter of ", shape_string(in.shape()),
            " into ", shape_string(out.shape()), " over ", size(), " ranks");
  check_same_size(CommOp::reduce_scatter, in.numel(), in.dtype());
  count(CommOp::reduce_scatter, in.bytes());
}

void Communicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  prepare_reduce_scatter(in, out);
  do_reduce_scatter(in, out, op);
}

std::unique_ptr<CommRequest> Communicator::start_reduce_scatter(const Tensor& in, Tensor& out,
                                                                ReduceOp op) {
  prepare_reduce_scatter(in, out);
  return do_start_reduce_scatter(in, out, op);
}

void Communicator::do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  do_start_reduce_scatter(in, out, op)->wait();
}

void Communicator::prepare_all_gather(const Tensor& in, const Tensor& out) {
  MM_ASSERT(in.dtype() == out.dtype(), "all_gather of ", dtype_name(in.dtype()), " into ",
            dtype_name(out.dtype()));
  MM_ASSERT(out.numel() == in.numel() * size(), "all_gather of ", shape_string(in.shape()),
            " into ", shape_string(out.shape()), " over ", size(), " ranks");
  check_same_size(CommOp::all_gather, in.numel(), in.dtype());
  count(CommOp::all_gather, out.bytes());
}

void Communicator::all_gather(const Tensor& in, Tensor& out) {
  prepare_all_gather(in, out);
  do_all_gather(in, out);
}

std::unique_ptr<CommRequest> Communicator::start_all_gather(const Tensor& in, Tensor& out) {
  prepare_all_gather(in, out);
  return do_start_all_gather(in, out);
}

void Communicator::do_all_gather(const Tensor& in, Tensor& out) {
  do_start_all_gather(in, out)->wait();
}

void Communicator::all_to_all(const Tensor& in, Tensor& out) {
  MM_ASSERT(in.dtype() == out.dtype() && in.numel() == out.numel() && in.numel() % size() == 0,
            "all_to_all of ", shape_string(in.shape()), " into ", shape_string(out.shape()),
            " over ", size(), " ranks");
  check_same_size(CommOp::all_to_all, in.numel(), in.dtype());
  count(CommOp::all_to_all, in.bytes());
  do_all_to_all(in, out);
}

std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> Communicator::prepare_all_to_all_v(
    const Tensor& in, const std::vector<std::int64_t>& send_rows, const Tensor& out,
    const std::vector<std::int64_t>& recv_rows) {
  const auto p = static_cast<std::size_t>(size());
  MM_ASSERT(send_rows.size() == p && recv_rows.size() == p, "all_to_all_v with ", send_rows.size(),
            " send and ", recv_rows.size(), " receive counts over ", p, " ranks");
  MM_ASSERT(in.dtype() == out.dtype(), "all_to_all_v of ", dtype_name(in.dtype()), " into ",
            dtype_name(out.dtype()));
  const std::int64_t width = row_width(in);
  MM_ASSERT(row_width(out) == width, "all_to_all_v rows of ", shape_string(in.shape()),
            " into rows of ", shape_string(out.shape()));
  const std::int64_t send_total = std::accumulate(send_rows.begin(), send_rows.end(), 0LL);
  const std::int64_t recv_total = std::accumulate(recv_rows.begin(), recv_rows.end(), 0LL);
  for (std::size_t i = 0; i < p; ++i)
    MM_ASSERT(send_rows[i] >= 0 && recv_rows[i] >= 0, "negative all_to_all_v count");
  MM_ASSERT(send_total * width == in.numel(), "all_to_all_v sends ", send_total, " rows of ", width,
            " but the input is ", shape_string(in.shape()));
  MM_ASSERT(recv_total * width <= out.numel(), "all_to_all_v receives ", recv_total, " rows of ",
            width, " but the output is ", shape_string(out.shape()));
  check_same_size(CommOp::all_to_all_v, width, in.dtype());
  check_counts_match(send_rows, recv_rows);
  std::vector<std::int64_t> send_counts(p), recv_counts(p);
  for (std::size_t i = 0; i < p; ++i) {
    send_counts[i] = send_rows[i] * width;
    recv_counts[i] = recv_rows[i] * width;
  }
  const std::int64_t to_others = send_total - send_rows[static_cast<std::size_t>(rank())];
  count(CommOp::all_to_all_v,
        static_cast<std::uint64_t>(to_others * width) * dtype_size(in.dtype()));
  return {std::move(send_counts), std::move(recv_counts)};
}

void Communicator::all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_rows,
                                Tensor& out, const std::vector<std::int64_t>& recv_rows) {
  const auto [send_counts, recv_counts] = prepare_all_to_all_v(in, send_rows, out, recv_rows);
  do_all_to_all_v(in, send_counts, out, recv_counts);
}

std::unique_ptr<CommRequest> Communicator::start_all_to_all_v(
    const Tensor& in, const std::vector<std::int64_t>& send_rows, Tensor& out,
    const std::vector<std::int64_t>& recv_rows) {
  const auto [send_counts, recv_counts] = prepare_all_to_all_v(in, send_rows, out, recv_rows);
  return do_start_all_to_all_v(in, send_counts, out, recv_counts);
}

namespace {

// A request that was complete when it was made.
class DoneRequest final : public CommRequest {
 public:
  void wait() override {}
  bool test() override { return true; }
};

}  // namespace

std::unique_ptr<CommRequest> Communicator::do_start_all_to_all_v(
    const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
    const std::vector<std::int64_t>& recv_counts) {
  do_all_to_all_v(in, send_counts, out, recv_counts);
  return std::make_unique<DoneRequest>();
}

Tensor Communicator::all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_rows,
                                  Arena& arena, std::vector<std::int64_t>& recv_rows) {
  recv_rows = exchange_counts(send_rows);
  const std::int64_t total = std::accumulate(recv_rows.begin(), recv_rows.end(), 0LL);
  Shape shape = in.rank() >= 1 ? in.shape() : Shape{1};
  shape[0] = total;
  Tensor out = Tensor::empty(shape, in.dtype(), arena, in.device());
  all_to_all_v(in, send_rows, out, recv_rows);
  return out;
}

std::vector<std::int64_t> Communicator::exchange_counts(
    const std::vector<std::int64_t>& send_counts) {
  MM_ASSERT(send_counts.size() == static_cast<std::size_t>(size()), "exchange_counts with ",
            send_counts.size(), " counts over ", size(), " ranks");
  count(CommOp::exchange_counts, 8ULL * send_counts.size());
  return host_all_to_all(send_counts);
}

std::vector<std::int64_t> Communicator::host_all_to_all(
    const std::vector<std::int64_t>& send_counts) {
  const auto p = static_cast<std::size_t>(size());
  Arena arena;
  std::vector<std::int64_t> received(p);
  {
    Tensor out_counts = Tensor::empty({static_cast<std::int64_t>(p)}, DType::i64, arena);
    Tensor in_counts = Tensor::empty({static_cast<std::int64_t>(p)}, DType::i64, arena);
    std::copy(send_counts.begin(), send_counts.end(), out_counts.data<std::int64_t>());
    do_all_to_all(out_counts, in_counts);
    std::copy(in_counts.data<std::int64_t>(), in_counts.data<std::int64_t>() + p, received.begin());
  }
  return received;
}

void Communicator::broadcast(Tensor& x, int root) {
  check_peer(root, "broadcast root");
  check_same_size(CommOp::broadcast, x.numel(), x.dtype());
  count(CommOp::broadcast, x.bytes());
  do_broadcast(x, root);
}

void Communicator::send(const Tensor& x, int dst, int tag) {
  start_send(x, dst, tag)->wait();
}

void Communicator::recv(Tensor& x, int src, int tag) {
  start_recv(x, src, tag)->wait();
}

std::unique_ptr<CommRequest> Communicator::start_send(const Tensor& x, int dst, int tag) {
  check_peer(dst, "send to");
  count(CommOp::send, x.bytes());
  return do_start_send(x, dst, tag);
}

std::unique_ptr<CommRequest> Communicator::start_recv(Tensor& x, int src, int tag) {
  check_peer(src, "recv from");
  return do_start_recv(x, src, tag);
}

void Communicator::barrier() {
  counters_.calls[static_cast<std::size_t>(CommOp::barrier)] += 1;
  do_barrier();
}

}  // namespace metamorph

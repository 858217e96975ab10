#pragma once
// The collective-communication interface every parallel layer talks to. One Communicator per
// group of ranks (a TP group, a DP group, ...); rank() and size() are positions inside the group.
//
// The public operations are non-virtual: they check shapes and dtypes, count the bytes this rank
// sends (the convention of docs/parallelism.md, identical for every backend, so the planner's
// communication model can be checked against it) and then call the backend's do_* hook.
// Operations are blocking unless their name starts with start_; those return a CommRequest.
// Every blocking wait is bounded by the backend's watchdog timeout.
#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

enum class ReduceOp { sum, max };

// The operations counted separately by the byte counters.
enum class CommOp {
  all_reduce,
  reduce_scatter,
  all_gather,
  all_to_all,
  all_to_all_v,
  exchange_counts,
  broadcast,
  send,
  barrier,
};
inline constexpr int kCommOpCount = 9;
std::string comm_op_name(CommOp op);

// A failure of the communication library itself (an MPI error code, a dead peer): not the
// user's input and not a bug in the caller.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What a communicator has sent since construction or the last reset_counters().
struct CommCounters {
  std::array<std::uint64_t, kCommOpCount> bytes{};
  std::array<std::uint64_t, kCommOpCount> calls{};
  std::uint64_t total_bytes() const;
  std::uint64_t bytes_of(CommOp op) const { return bytes[static_cast<std::size_t>(op)]; }
  std::uint64_t calls_of(CommOp op) const { return calls[static_cast<std::size_t>(op)]; }
};

// The algorithm-independent byte count of one operation, for a group of p ranks (see
// docs/parallelism.md). `bytes` is the full buffer: the all-reduced tensor, the reduce-scatter
// input, the all-gather output, the all-to-all send buffer, the broadcast tensor. Integer
// division rounds down.
std::uint64_t convention_bytes(CommOp op, std::uint64_t bytes, int p);

// A started operation. wait() blocks (under the watchdog) until it completes; the destructor
// waits too, so buffers are never released while the library still uses them.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void wait() = 0;
  // True once complete (then wait() returns at once).
  virtual bool test() = 0;
};

class Communicator {
 public:
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group's name in messages ("tp", "dp", "world", ...).
  virtual const std::string& name() const = 0;

  // In place over every member; f32, i32, i64.
  void all_reduce(Tensor& x, ReduceOp op = ReduceOp::sum);
  // Starts an in-place all-reduce; x must stay untouched until the request completes.
  std::unique_ptr<CommRequest> start_all_reduce(Tensor& x, ReduceOp op = ReduceOp::sum);
  // in holds size() equal chunks in rank order (flat, so along dim 0 when dim 0 divides);
  // out (numel = in.numel() / size()) receives the reduction of every rank's chunk rank().
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op = ReduceOp::sum);
  std::unique_ptr<CommRequest> start_reduce_scatter(const Tensor& in, Tensor& out,
                                                    ReduceOp op = ReduceOp::sum);
  // out (numel = size() * in.numel()) receives every rank's in, in rank order.
  void all_gather(const Tensor& in, Tensor& out);
  std::unique_ptr<CommRequest> start_all_gather(const Tensor& in, Tensor& out);
  // in and out hold size() equal chunks; chunk j of in goes to rank j, chunk i of out came from
  // rank i. Any dtype.
  void all_to_all(const Tensor& in, Tensor& out);
  // Variable all-to-all along dim 0: send_rows[j] consecutive rows of in go to rank j (in rank
  // order); recv_rows[i] rows from rank i land in out, in rank order. Row width and dtype must
  // match on every rank; recv_rows must be what the peers send (exchange_counts gives it).
  void all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_rows, Tensor& out,
                    const std::vector<std::int64_t>& recv_rows);
  // Starts it; in and out must stay untouched until the request completes (the request holds
  // their storage). A backend without an asynchronous form completes it before returning.
  std::unique_ptr<CommRequest> start_all_to_all_v(const Tensor& in,
                                                  const std::vector<std::int64_t>& send_rows,
                                                  Tensor& out,
                                                  const std::vector<std::int64_t>& recv_rows);
  // The same, with the counts exchanged first and out allocated from arena; returns out and
  // fills recv_rows.
  Tensor all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_rows, Arena& arena,
                      std::vector<std::int64_t>& recv_rows);
  // Returns, for every rank i, the count rank i passed for this rank (an all-to-all of one
  // integer per peer).
  std::vector<std::int64_t> exchange_counts(const std::vector<std::int64_t>& send_counts);
  // x from root to every member, in place.
  void broadcast(Tensor& x, int root);
  void send(const Tensor& x, int dst, int tag = 0);
  void recv(Tensor& x, int src, int tag = 0);
  // x must stay alive and untouched until the request completes (the request holds a reference
  // to its storage).
  std::unique_ptr<CommRequest> start_send(const Tensor& x, int dst, int tag = 0);
  std::unique_ptr<CommRequest> start_recv(Tensor& x, int src, int tag = 0);
  void barrier();

  // A communicator over some members of this one (ranks of this group, in the order that becomes
  // the new group's rank order). Collective over those members only.
  virtual std::unique_ptr<Communicator> subgroup(const std::vector<int>& members,
                                                 const std::string& name) = 0;

  const CommCounters& counters() const { return counters_; }
  std::uint64_t bytes_sent() const { return counters_.total_bytes(); }
  std::uint64_t bytes_sent(CommOp op) const { return counters_.bytes_of(op); }
  void reset_counters() { counters_ = {}; }

 protected:
  // Hooks for a backend; arguments are already checked against each other on this rank.
  virtual std::unique_ptr<CommRequest> do_start_all_reduce(Tensor& x, ReduceOp op) = 0;
  // The blocking form; the default starts it and waits. A backend whose blocking form has
  // nothing to overlap, and so can skip the started form's bookkeeping (NCCL: no second stream),
  // overrides it.
  virtual void do_all_reduce(Tensor& x, ReduceOp op);
  virtual std::unique_ptr<CommRequest> do_start_reduce_scatter(const Tensor& in, Tensor& out,
                                                               ReduceOp op) = 0;
  virtual void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op);  // likewise
  virtual std::unique_ptr<CommRequest> do_start_all_gather(const Tensor& in, Tensor& out) = 0;
  virtual void do_all_gather(const Tensor& in, Tensor& out);  // likewise
  virtual void do_all_to_all(const Tensor& in, Tensor& out) = 0;
  // Counts and displacements in elements.
  virtual void do_all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_counts,
                               Tensor& out, const std::vector<std::int64_t>& recv_counts) = 0;
  // The started form; the default runs do_all_to_all_v and returns a completed request.
  virtual std::unique_ptr<CommRequest> do_start_all_to_all_v(
      const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
      const std::vector<std::int64_t>& recv_counts);
  virtual void do_broadcast(Tensor& x, int root) = 0;
  virtual std::unique_ptr<CommRequest> do_start_send(const Tensor& x, int dst, int tag) = 0;
  virtual std::unique_ptr<CommRequest> do_start_recv(Tensor& x, int src, int tag) = 0;
  virtual void do_barrier() = 0;
  // Whether collectives first agree (with one small extra all-reduce) that every member passes
  // the same size and dtype, and all-to-all-v counts match; on by default in debug builds.
  virtual bool size_checks() const = 0;
  // Whether the library reduces this dtype (MPI has no bf16; NCCL has).
  virtual bool reduces(DType dtype) const { return dtype != DType::bf16; }
  // Small host-side exchanges for counts and checks, not counted as traffic. The defaults go
  // through do_start_all_reduce / do_all_to_all on CPU tensors; a device backend whose hooks
  // need device memory overrides them.
  virtual void host_max(std::vector<std::int64_t>& values);
  virtual std::vector<std::int64_t> host_all_to_all(const std::vector<std::int64_t>& counts);

 private:
  void count(CommOp op, std::uint64_t bytes);
  void check_peer(int peer, const char* what) const;
  // Throws std::logic_error on every member alike when the members disagree on numel or dtype.
  void check_same_size(CommOp op, std::int64_t numel, DType dtype);
  // Each operation's checks and byte count, the same for the blocking and the started form.
  void prepare_all_reduce(const Tensor& x);
  void prepare_reduce_scatter(const Tensor& in, const Tensor& out);
  void prepare_all_gather(const Tensor& in, const Tensor& out);
  void check_counts_match(const std::vector<std::int64_t>& send_rows,
                          const std::vector<std::int64_t>& recv_rows);
  // all_to_all_v's checks and byte count; returns the counts in elements (send, receive).
  std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> prepare_all_to_all_v(
      const Tensor& in, const std::vector<std::int64_t>& send_rows, const Tensor& out,
      const std::vector<std::int64_t>& recv_rows);

  CommCounters counters_;
};

}  // namespace metamorph

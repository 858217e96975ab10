#pragma once
// The Communicator over MPI, on CPU tensors. Every MPI error becomes a CommError (the
// communicators use MPI_ERRORS_RETURN), and every wait is a polling loop with a deadline: when a
// peer has died or hangs, this rank prints one clear line and aborts the job (or throws, if asked)
// instead of waiting forever.
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.hpp"

namespace metamorph {

struct MpiOptions {
  // Seconds a single operation may wait for its peers before the watchdog fires.
  double timeout_s = 600.0;
  // true: print the reason and MPI_Abort the whole job (exit code 3); false: throw CommError and
  // leave the communicator unusable (for tests of the watchdog itself).
  bool abort_on_timeout = true;
#ifdef NDEBUG
  bool size_checks = false;
#else
  bool size_checks = true;
#endif
  // Defaults, with METAMORPH_COMM_TIMEOUT (seconds, > 0) and METAMORPH_COMM_CHECKS (0 or 1) from
  // the environment when set; throws InputError for a malformed value.
  static MpiOptions from_environment();
};

class MpiCommunicator final : public Communicator {
 public:
  // A private duplicate of parent (e.g. MPI_COMM_WORLD). Collective over parent.
  static std::unique_ptr<MpiCommunicator> duplicate(MPI_Comm parent, const std::string& name,
                                                    const MpiOptions& options);
  // A communicator over `members` (ranks of parent, in the order that becomes the new rank
  // order). Collective over the members only.
  static std::unique_ptr<MpiCommunicator> from_members(MPI_Comm parent,
                                                       const std::vector<int>& members,
                                                       const std::string& name,
                                                       const MpiOptions& options);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  MPI_Comm handle() const { return comm_; }
  const MpiOptions& options() const { return options_; }

  std::unique_ptr<Communicator> subgroup(const std::vector<int>& members,
                                         const std::string& name) override;

  // Waits for requests under the watchdog; `what` names the operation in the timeout message.
  void wait_all(std::vector<MPI_Request>& requests, const std::string& what) const;

 protected:
  std::unique_ptr<CommRequest> do_start_all_reduce(Tensor& x, ReduceOp op) override;
  std::unique_ptr<CommRequest> do_start_reduce_scatter(const Tensor& in, Tensor& out,
                                                       ReduceOp op) override;
  std::unique_ptr<CommRequest> do_start_all_gather(const Tensor& in, Tensor& out) override;
  void do_all_to_all(const Tensor& in, Tensor& out) override;
  void do_all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
                       const std::vector<std::int64_t>& recv_counts) override;
  // MPI_Ialltoallv; the request holds in and out until it completes.
  std::unique_ptr<CommRequest> do_start_all_to_all_v(
      const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
      const std::vector<std::int64_t>& recv_counts) override;
  void do_broadcast(Tensor& x, int root) override;
  std::unique_ptr<CommRequest> do_start_send(const Tensor& x, int dst, int tag) override;
  std::unique_ptr<CommRequest> do_start_recv(Tensor& x, int src, int tag) override;
  void do_barrier() override;
  bool size_checks() const override { return options_.size_checks; }

 private:
  MpiCommunicator(MPI_Comm comm, const std::string& name, const MpiOptions& options);
  // Throws CommError naming the call and MPI's own message when rc is not MPI_SUCCESS.
  void check(int rc, const char* call) const;
  [[noreturn]] void on_timeout(const std::string& what) const;
  void run(const std::string& what, MPI_Request request) const;

  MPI_Comm comm_;
  std::string name_;
  MpiOptions options_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace metamorph

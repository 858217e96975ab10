// The blocking all_reduce, reduce_scatter and all_gather go through their own hooks
// (do_all_reduce, ...), whose default is the started form and its wait; either way the checks
// and the byte count are the public call's, identical for the blocking and the started form. A
// fake communicator of four ranks (no MPI) logs the hooks it sees.
#include <gtest/gtest.h>

#include <stdexcept>

#include "parallel/communicator.hpp"

namespace metamorph {
namespace {

class LoggingRequest final : public CommRequest {
 public:
  explicit LoggingRequest(std::vector<std::string>& log) : log_(log) {}
  void wait() override { log_.push_back("wait"); }
  bool test() override { return true; }

 private:
  std::vector<std::string>& log_;
};

// Logs the hooks; `blocking_hooks` says whether it overrides the blocking ones (as the NCCL
// backend does) or keeps the defaults (as the MPI backend does).
class HookLog final : public Communicator {
 public:
  explicit HookLog(bool blocking_hooks) : blocking_hooks_(blocking_hooks) {}
  std::vector<std::string> log;

  int rank() const override { return 0; }
  int size() const override { return 4; }
  const std::string& name() const override { return name_; }
  std::unique_ptr<Communicator> subgroup(const std::vector<int>&, const std::string&) override {
    throw std::logic_error("not used");
  }

 protected:
  std::unique_ptr<CommRequest> do_start_all_reduce(Tensor&, ReduceOp) override {
    return started("all_reduce");
  }
  void do_all_reduce(Tensor& x, ReduceOp op) override {
    if (!blocking_hooks_) return Communicator::do_all_reduce(x, op);
    log.push_back("all_reduce");
  }
  std::unique_ptr<CommRequest> do_start_reduce_scatter(const Tensor&, Tensor&, ReduceOp) override {
    return started("reduce_scatter");
  }
  void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    if (!blocking_hooks_) return Communicator::do_reduce_scatter(in, out, op);
    log.push_back("reduce_scatter");
  }
  std::unique_ptr<CommRequest> do_start_all_gather(const Tensor&, Tensor&) override {
    return started("all_gather");
  }
  void do_all_gather(const Tensor& in, Tensor& out) override {
    if (!blocking_hooks_) return Communicator::do_all_gather(in, out);
    log.push_back("all_gather");
  }
  void do_all_to_all(const Tensor&, Tensor&) override { throw std::logic_error("not used"); }
  void do_all_to_all_v(const Tensor&, const std::vector<std::int64_t>&, Tensor&,
                       const std::vector<std::int64_t>&) override {
    throw std::logic_error("not used");
  }
  void do_broadcast(Tensor&, int) override { throw std::logic_error("not used"); }
  std::unique_ptr<CommRequest> do_start_send(const Tensor&, int, int) override {
    throw std::logic_error("not used");
  }
  std::unique_ptr<CommRequest> do_start_recv(Tensor&, int, int) override {
    throw std::logic_error("not used");
  }
  void do_barrier() override {}
  bool size_checks() const override { return false; }

 private:
  std::unique_ptr<CommRequest> started(const char* op) {
    log.push_back(std::string("start_") + op);
    return std::make_unique<LoggingRequest>(log);
  }

  bool blocking_hooks_;
  std::string name_ = "fake";
};

using Log = std::vector<std::string>;

// Runs the three operations blocking, then started and waited for: an all-reduce of 1000 bytes,
// a reduce-scatter and an all-gather between 992 bytes and four quarters of 248.
void run_both_forms(Communicator& comm) {
  Arena arena;
  Tensor whole = Tensor::empty({250}, DType::f32, arena);
  Tensor quarter = Tensor::empty({62}, DType::f32, arena);
  Tensor four_quarters = Tensor::empty({4 * 62}, DType::f32, arena);
  comm.all_reduce(whole);
  comm.reduce_scatter(four_quarters, quarter);
  comm.all_gather(quarter, four_quarters);
  comm.start_all_reduce(whole)->wait();
  comm.start_reduce_scatter(four_quarters, quarter)->wait();
  comm.start_all_gather(quarter, four_quarters)->wait();
}

TEST(BlockingHooks, BlockingCallsGoThroughTheirOwnHooksAndCountLikeTheStartedForms) {
  HookLog comm(/*blocking_hooks=*/true);
  run_both_forms(comm);
  EXPECT_EQ(comm.log, (Log{"all_reduce", "reduce_scatter", "all_gather", "start_all_reduce", "wait",
                           "start_reduce_scatter", "wait", "start_all_gather", "wait"}));
  // Each form once: 2 (p-1)/p of 1000 bytes for the all-reduce, (p-1)/p of 992 for the others.
  EXPECT_EQ(comm.bytes_sent(CommOp::all_reduce), 2 * 1500u);
  EXPECT_EQ(comm.bytes_sent(CommOp::reduce_scatter), 2 * 744u);
  EXPECT_EQ(comm.bytes_sent(CommOp::all_gather), 2 * 744u);
  for (CommOp op : {CommOp::all_reduce, CommOp::reduce_scatter, CommOp::all_gather})
    EXPECT_EQ(comm.counters().calls_of(op), 2u) << comm_op_name(op);
}

TEST(BlockingHooks, DefaultHooksStartAndWait) {
  HookLog comm(/*blocking_hooks=*/false);
  run_both_forms(comm);
  EXPECT_EQ(comm.log, (Log{"start_all_reduce", "wait", "start_reduce_scatter", "wait",
                           "start_all_gather", "wait", "start_all_reduce", "wait",
                           "start_reduce_scatter", "wait", "start_all_gather", "wait"}));
  EXPECT_EQ(comm.bytes_sent(CommOp::all_reduce), 2 * 1500u);
  EXPECT_EQ(comm.bytes_sent(CommOp::reduce_scatter), 2 * 744u);
  EXPECT_EQ(comm.bytes_sent(CommOp::all_gather), 2 * 744u);
}

}  // namespace
}  // namespace metamorph

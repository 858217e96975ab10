// Communicator::all_reduce goes through the do_all_reduce hook, whose default is the started form
// and its wait; either way the checks and the byte count are the public call's, identical for
// the blocking and the started form. A fake communicator of four ranks (no MPI) logs the hooks
// it sees.
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

// Logs the all-reduce hooks; `blocking_hook` says whether it overrides do_all_reduce (as the
// NCCL backend does) or keeps the default (as the MPI backend does).
class HookLog final : public Communicator {
 public:
  explicit HookLog(bool blocking_hook) : blocking_hook_(blocking_hook) {}
  std::vector<std::string> log;

  int rank() const override { return 0; }
  int size() const override { return 4; }
  const std::string& name() const override { return name_; }
  std::unique_ptr<Communicator> subgroup(const std::vector<int>&, const std::string&) override {
    throw std::logic_error("not used");
  }

 protected:
  std::unique_ptr<CommRequest> do_start_all_reduce(Tensor&, ReduceOp) override {
    log.push_back("start_all_reduce");
    return std::make_unique<LoggingRequest>(log);
  }
  void do_all_reduce(Tensor& x, ReduceOp op) override {
    if (!blocking_hook_) return Communicator::do_all_reduce(x, op);
    log.push_back("all_reduce");
  }
  std::unique_ptr<CommRequest> do_start_reduce_scatter(const Tensor&, Tensor&, ReduceOp) override {
    throw std::logic_error("not used");
  }
  std::unique_ptr<CommRequest> do_start_all_gather(const Tensor&, Tensor&) override {
    throw std::logic_error("not used");
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
  bool blocking_hook_;
  std::string name_ = "fake";
};

TEST(BlockingAllReduce, GoesThroughItsOwnHookAndCountsLikeTheStartedForm) {
  Arena arena;
  Tensor x = Tensor::empty({250}, DType::f32, arena);  // 1000 bytes
  HookLog comm(/*blocking_hook=*/true);
  comm.all_reduce(x);
  EXPECT_EQ(comm.log, (std::vector<std::string>{"all_reduce"}));
  EXPECT_EQ(comm.bytes_sent(CommOp::all_reduce), 1500u);  // 2 (p-1)/p of 1000 bytes
  EXPECT_EQ(comm.counters().calls_of(CommOp::all_reduce), 1u);
  comm.start_all_reduce(x)->wait();
  EXPECT_EQ(comm.log, (std::vector<std::string>{"all_reduce", "start_all_reduce", "wait"}));
  EXPECT_EQ(comm.bytes_sent(CommOp::all_reduce), 3000u);
  EXPECT_EQ(comm.counters().calls_of(CommOp::all_reduce), 2u);
}

TEST(BlockingAllReduce, DefaultHookStartsAndWaits) {
  Arena arena;
  Tensor x = Tensor::empty({250}, DType::f32, arena);
  HookLog comm(/*blocking_hook=*/false);
  comm.all_reduce(x);
  EXPECT_EQ(comm.log, (std::vector<std::string>{"start_all_reduce", "wait"}));
  EXPECT_EQ(comm.bytes_sent(CommOp::all_reduce), 1500u);
  EXPECT_EQ(comm.counters().calls_of(CommOp::all_reduce), 1u);
}

}  // namespace
}  // namespace metamorph

// ZeRO-1's bucketed gradient reduce-scatter overlapped with the last micro-batch's backward:
// the buckets start while the backward still runs (before its last tensor- or
// expert-parallel exchange), and the runs' losses and gradient norms equal those of one
// reduce-scatter after the backward bit for bit. Under TP with QK-norm the overlap stays off.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/init.hpp"
#include "parallel/mpi_communicator.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/train/training_run.hpp"
#include "runtime/train/zero1.hpp"
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

// A communicator that writes "<group> <operation>" to a shared log before passing each
// operation to the communicator it wraps; its subgroups record into the same log.
class RecordingCommunicator final : public Communicator {
 public:
  using Log = std::vector<std::string>;
  RecordingCommunicator(std::unique_ptr<Communicator> inner, std::shared_ptr<Log> log)
      : inner_(std::move(inner)), log_(std::move(log)) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  std::unique_ptr<Communicator> subgroup(const std::vector<int>& members,
                                         const std::string& name) override {
    return std::make_unique<RecordingCommunicator>(inner_->subgroup(members, name), log_);
  }

 protected:
  std::unique_ptr<CommRequest> do_start_all_reduce(Tensor& x, ReduceOp op) override {
    record("all_reduce");
    return inner_->start_all_reduce(x, op);
  }
  std::unique_ptr<CommRequest> do_start_reduce_scatter(const Tensor& in, Tensor& out,
                                                       ReduceOp op) override {
    record("reduce_scatter");
    return inner_->start_reduce_scatter(in, out, op);
  }
  std::unique_ptr<CommRequest> do_start_all_gather(const Tensor& in, Tensor& out) override {
    record("all_gather");
    return inner_->start_all_gather(in, out);
  }
  void do_all_to_all(const Tensor& in, Tensor& out) override {
    record("all_to_all");
    inner_->all_to_all(in, out);
  }
  void do_all_to_all_v(const Tensor& in, const std::vector<std::int64_t>& send_counts, Tensor& out,
                       const std::vector<std::int64_t>& recv_counts) override {
    record("all_to_all_v");
    // Counts are in elements here: flat views make them rows.
    Tensor flat_out = out.view({out.numel()});
    inner_->all_to_all_v(in.view({in.numel()}), send_counts, flat_out, recv_counts);
  }
  void do_broadcast(Tensor& x, int root) override {
    record("broadcast");
    inner_->broadcast(x, root);
  }
  std::unique_ptr<CommRequest> do_start_send(const Tensor& x, int dst, int tag) override {
    record("send");
    return inner_->start_send(x, dst, tag);
  }
  std::unique_ptr<CommRequest> do_start_recv(Tensor& x, int src, int tag) override {
    record("recv");
    return inner_->start_recv(x, src, tag);
  }
  void do_barrier() override { inner_->barrier(); }
  bool size_checks() const override { return false; }  // the wrapped communicator checks

 private:
  void record(const char* op) { log_->push_back(name() + " " + op); }

  std::unique_ptr<Communicator> inner_;
  std::shared_ptr<Log> log_;
};

fs::path shared_dir() {
  return test::shared_corpus_dir("metamorph-zero1-overlap-", 260, [](const fs::path& dir) {
    test::write_file(dir / "dense.json", test::kTinyDenseJson);
    test::write_file(dir / "qk_norm.json", R"({"vocab_size": 260, "hidden_size": 32,
      "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "model_type": "qwen3"})");
    test::write_file(dir / "moe.json", test::kTinyMoeJson);
  });
}

struct TrainedRun {
  std::vector<double> losses, grad_norms, val_losses;
  std::vector<std::string> first_step;  // the communication log of step 1, in order
};

TrainedRun train(const fs::path& dir, const std::string& model, int tp, int dp, int ep,
                 bool overlap) {
  RunOptions o;
  o.model_path = (dir / model).string();
  o.data_prefix = (dir / "data").string();
  o.steps = 4;
  o.seq = 16;
  o.micro_batch = 1;
  o.global_batch = 8;
  o.lr = 3e-3;
  o.warmup = 1;
  o.eval_every = 2;  // validation reads the weights the gathers are still writing
  o.eval_batches = 2;
  o.tp = tp;
  o.dp = dp;
  o.ep = ep;
  o.zero1 = true;
  o.grad_bucket_elements = 500;  // a bucket per layer, or per few layers
  o.overlap_grad_reduce = overlap;
  auto log = std::make_shared<RecordingCommunicator::Log>();
  TrainedRun run;
  run_training(
      o, Logger(LogOptions{.rank = 1}),
      [&](const StepMetrics& m) {
        if (run.losses.empty()) run.first_step = *log;
        run.losses.push_back(m.loss);
        run.grad_norms.push_back(m.grad_norm);
        if (m.val_loss) run.val_losses.push_back(*m.val_loss);
      },
      std::make_unique<RecordingCommunicator>(
          MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}), log));
  return run;
}

// Positions in the log of the first entry `entry` and of the last entry starting with `prefix`.
std::ptrdiff_t first_of(const std::vector<std::string>& log, const std::string& entry) {
  const auto it = std::find(log.begin(), log.end(), entry);
  return it == log.end() ? -1 : it - log.begin();
}
std::ptrdiff_t last_of(const std::vector<std::string>& log, const std::string& prefix) {
  for (auto i = static_cast<std::ptrdiff_t>(log.size()) - 1; i >= 0; --i)
    if (log[static_cast<std::size_t>(i)].rfind(prefix, 0) == 0) return i;
  return -1;
}

// The overlapped run equals the serial one bit for bit; in the overlapped run `reduced` group's
// first reduce-scatter comes before the backward's last exchange `during` (the TP all-reduces,
// the EP all-to-alls: the gradient norm's sums over those groups come after the step's
// reduce-scatters), in the serial run after it.
void expect_overlap(const fs::path& dir, const std::string& model, int tp, int dp, int ep,
                    const std::string& reduced, const std::string& during) {
  const std::string name =
      model + " tp" + std::to_string(tp) + " dp" + std::to_string(dp) + " ep" + std::to_string(ep);
  const TrainedRun overlapped = train(dir, model, tp, dp, ep, true);
  const TrainedRun serial = train(dir, model, tp, dp, ep, false);
  ASSERT_EQ(overlapped.losses.size(), 4u);
  ASSERT_EQ(serial.losses.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(overlapped.losses[i], serial.losses[i]) << name << " step " << i + 1;
    EXPECT_EQ(overlapped.grad_norms[i], serial.grad_norms[i]) << name << " step " << i + 1;
  }
  EXPECT_EQ(overlapped.val_losses, serial.val_losses) << name;
  EXPECT_EQ(overlapped.val_losses.size(), 2u) << name;
  const auto started = first_of(overlapped.first_step, reduced + " reduce_scatter");
  const auto exchanged = last_of(overlapped.first_step, during);
  ASSERT_GE(started, 0) << name;
  ASSERT_GE(exchanged, 0) << name;
  EXPECT_LT(started, exchanged) << name << ": no reduce-scatter started during the backward";
  EXPECT_GT(first_of(serial.first_step, reduced + " reduce_scatter"),
            last_of(serial.first_step, during))
      << name << ": the serial run reduce-scatters during the backward";
}

// Buckets hold whole layers: with a one-element target every layer is its own bucket, the final
// norm and head share one (they become final together), the embedding has its own; with none,
// one bucket holds everything.
TEST(Zero1Overlap, BucketsAreWholeLayers) {
  const fs::path dir = shared_dir();
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = load_model_config((dir / "dense.json").string());
  auto world = MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{});
  ParameterSet per_layer_params = make_parameters(cpu, config);
  const Zero1 per_layer(cpu, per_layer_params, *world, nullptr, 1);
  EXPECT_EQ(per_layer.bucket_count(), config.num_layers + 2);
  ParameterSet one_params = make_parameters(cpu, config);
  const Zero1 one(cpu, one_params, *world);
  EXPECT_EQ(one.bucket_count(), 1);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

TEST(Zero1Overlap, ReduceScatterStartsDuringTheBackwardWithTheSameBits) {
  const fs::path dir = shared_dir();
  if (world_size() == 2) {
    // Dense ZeRO-1 under expert parallelism (the experts have one holder each).
    expect_overlap(dir, "moe.json", 1, 2, 2, "dp", "ep all_to_all");
  } else {
    ASSERT_EQ(world_size(), 4);
    // Four replicas: the sums of four values must come out the same in every bucketing.
    const TrainedRun overlapped = train(dir, "dense.json", 1, 4, 1, true);
    const TrainedRun serial = train(dir, "dense.json", 1, 4, 1, false);
    EXPECT_EQ(overlapped.losses, serial.losses) << "dp4";
    EXPECT_EQ(overlapped.grad_norms, serial.grad_norms) << "dp4";
    EXPECT_EQ(overlapped.val_losses, serial.val_losses) << "dp4";
    EXPECT_GT(
        std::count(overlapped.first_step.begin(), overlapped.first_step.end(), "dp reduce_scatter"),
        1)
        << "dp4: one reduce-scatter bucket";
    EXPECT_GT(
        std::count(overlapped.first_step.begin(), overlapped.first_step.end(), "dp all_gather"), 1)
        << "dp4: one all-gather bucket";
    // Under TP the last exchanges of the backward are TP all-reduces.
    expect_overlap(dir, "dense.json", 2, 2, 1, "dp", "tp all_reduce");
    // Routed experts over the expert-DP group (ep2 of dp4: two holders of each expert).
    expect_overlap(dir, "moe.json", 1, 4, 2, "expert_dp", "ep all_to_all");
    // TP with QK-norm sums the norms' gradients over TP after the backward: no overlap.
    const TrainedRun qk = train(dir, "qk_norm.json", 2, 2, 1, true);
    EXPECT_GT(first_of(qk.first_step, "dp reduce_scatter"), last_of(qk.first_step, "tp all_reduce"))
        << "tp2 dp2 with QK-norm reduce-scatters before TP sums its norm gradients";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

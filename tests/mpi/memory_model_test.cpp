// The planner's per-rank memory (metamorph accounting, fp32) against the arena's measured peak
// of a real training step, for every layout the parallelism tests run: within 5% on each rank.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>

#include "parallel/mpi_communicator.hpp"
#include "planner/model_shape.hpp"
#include "planner/runtime_memory.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kSeq = 32, kGlobal = 8;

struct Case {
  int tp = 1, pp = 1, dp = 1;
  std::int64_t micro_batch = 2;
  bool zero1 = false;
  bool recompute = false;
  std::string model = "llama";
};

class MemoryModel : public ::testing::Test {
 protected:
  void SetUp() override {
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    long id = rank_ == 0 ? static_cast<long>(::getpid()) : 0;
    MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    dir_ = fs::temp_directory_path() / ("metamorph-memory-" + std::to_string(id));
    if (rank_ == 0) {
      fs::create_directories(dir_);
      std::string text;
      for (int d = 0; d < 200; ++d) text += "memory sample number " + std::to_string(d) + ".\n\n";
      test::write_file(dir_ / "corpus.txt", text);
      data::PrepareOptions p;
      p.input = (dir_ / "corpus.txt").string();
      p.tokenizer = "byte";
      p.vocab_size = 384;
      p.output_prefix = (dir_ / "data").string();
      p.validation_fraction = 0.05;
      data::prepare_dataset(p);
      // Vocabulary, FFN and layer count large enough that the arena's bookkeeping is noise.
      test::write_file(dir_ / "llama.json", R"({"vocab_size": 384, "hidden_size": 64,
        "intermediate_size": 176, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64})");
      test::write_file(dir_ / "qwen3.json", R"({"vocab_size": 384, "hidden_size": 64,
        "intermediate_size": 176, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 64, "model_type": "qwen3",
        "attention_bias": true, "tie_word_embeddings": true})");
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  void TearDown() override {
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank_ == 0 && !dir_.empty()) fs::remove_all(dir_);
  }

  // Step 2's peak on this rank (step 1 creates the AdamW moments partway).
  double measured_peak(const Case& c) {
    RunOptions o;
    o.model_path = (dir_ / (c.model + ".json")).string();
    o.data_prefix = (dir_ / "data").string();
    o.steps = 2;
    o.seq = kSeq;
    o.micro_batch = c.micro_batch;
    o.global_batch = kGlobal;
    o.tp = c.tp;
    o.pp = c.pp;
    o.dp = c.dp;
    o.zero1 = c.zero1;
    o.recompute = c.recompute;
    o.eval_batches = 1;
    double peak = 0;
    std::unique_ptr<Communicator> world;
    if (size_ > 1) world = MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{});
    run_training(
        o, Logger(LogOptions{.rank = 1}),
        [&](const StepMetrics& m) {
          if (m.step == 2) peak = static_cast<double>(m.peak_bytes);
        },
        std::move(world));
    return peak;
  }

  double predicted_peak(const Case& c) const {
    const planner::ModelShape shape =
        planner::load_model_shape((dir_ / (c.model + ".json")).string());
    planner::Job job;
    job.seq = kSeq;
    job.global_batch = kGlobal;
    planner::set_precision(job, "fp32");
    job.accounting = planner::ActivationAccounting::metamorph;
    planner::Layout l;
    l.tp = c.tp;
    l.pp = c.pp;
    l.dp = c.dp;
    l.micro_batch = static_cast<int>(c.micro_batch);
    l.num_micro_batches = kGlobal / (c.micro_batch * c.dp);
    l.zero1 = c.zero1;
    l.recompute = c.recompute ? planner::Recompute::full : planner::Recompute::none;
    const int stage = (rank_ / (c.tp * c.dp)) % c.pp;  // Megatron order: TP, DP, then PP
    return planner::metamorph_rank_memory(shape, job, l, stage).total();
  }

  void check(const Case& c) {
    if (c.tp * c.pp * c.dp != size_) return;
    const double measured = measured_peak(c), predicted = predicted_peak(c);
    EXPECT_NEAR(predicted / measured, 1.0, 0.05)
        << "rank " << rank_ << " of tp " << c.tp << " pp " << c.pp << " dp " << c.dp
        << (c.zero1 ? " zero1" : "") << (c.recompute ? " recompute" : "") << " " << c.model
        << ": predicted " << predicted << " bytes, measured " << measured;
  }

  int size_ = 1, rank_ = 0;
  fs::path dir_;
};

TEST_F(MemoryModel, SingleRank) {
  check({});
  check({.micro_batch = 1});
  check({.recompute = true});
  check({.model = "qwen3"});
}

TEST_F(MemoryModel, TwoRanks) {
  check({.tp = 2});
  check({.pp = 2, .micro_batch = 1});
  check({.dp = 2});
  check({.dp = 2, .zero1 = true});
  check({.tp = 2, .model = "qwen3"});
  check({.pp = 2, .recompute = true, .model = "qwen3"});
}

TEST_F(MemoryModel, FourRanks) {
  check({.tp = 2, .pp = 2, .micro_batch = 1});
  check({.pp = 2, .dp = 2, .micro_batch = 1, .zero1 = true});
  check({.tp = 2, .dp = 2});
  check({.pp = 4, .micro_batch = 1, .model = "qwen3"});
}

}  // namespace
}  // namespace metamorph

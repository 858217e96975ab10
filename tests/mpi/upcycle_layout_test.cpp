// An upcycled model trains like any MoE: a dense model trained 40 steps, upcycled (exact
// copies, a shared expert), then trained under ep2 and tp2 ep2 gives the single-rank losses at
// every step; and its first step's loss is the dense model's on the same batch (the upcycled
// model starts where the dense one stopped).
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "parallel/mpi_communicator.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "runtime/transforms/upcycle_checkpoint.hpp"
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

// The model is given per run (model_path), not the directory's model.json.
RunOptions options(const fs::path& dir, const std::string& save, std::int64_t steps) {
  RunOptions o = test::small_run_options(dir, save, steps);
  o.model_path.clear();
  return o;
}

// Rank 0's single-rank run, its losses shared with every rank; empty on every rank when it
// failed (so the other ranks do not wait forever for a broadcast).
std::vector<double> train_on_rank0(const RunOptions& o) {
  std::vector<double> losses(static_cast<std::size_t>(o.steps), 0.0);
  int ok = 1;
  if (world_rank() == 0) {
    try {
      std::size_t i = 0;
      run_training(o, Logger(LogOptions{.rank = 1}),
                   [&](const StepMetrics& m) { losses.at(i++) = m.loss; });
    } catch (const std::exception& e) {
      ADD_FAILURE() << o.save_dir << ": " << e.what();
      ok = 0;
    }
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (!ok) return {};
  MPI_Bcast(losses.data(), static_cast<int>(losses.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return losses;
}

// Rank 0 prepares a corpus, trains the dense model 40 steps and upcycles it; every rank gets
// the directory.
fs::path upcycled_dir() {
  long id = world_rank() == 0 ? static_cast<long>(::getpid()) : 0;
  MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  const fs::path dir = fs::temp_directory_path() / ("metamorph-upcycle-" + std::to_string(id));
  if (world_rank() == 0) {
    // Failures are reported, not thrown: the other ranks are waiting at the barrier below.
    try {
      fs::create_directories(dir);
      std::string text;
      for (int d = 0; d < 200; ++d)
        text += "entry " + std::to_string(d * 7919 % 1000) + " of the upcycling corpus " +
                std::string(static_cast<std::size_t>(d % 11), 'y') + ".\n\n";
      test::write_file(dir / "corpus.txt", text);
      data::PrepareOptions p;
      p.input = (dir / "corpus.txt").string();
      p.tokenizer = "byte";
      p.vocab_size = 260;
      p.output_prefix = (dir / "data").string();
      p.validation_fraction = 0.05;
      data::prepare_dataset(p);
      test::write_file(dir / "dense.json", R"({"vocab_size": 260, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 64})");
      RunOptions dense = options(dir, "dense", 40);
      dense.model_path = (dir / "dense.json").string();
      run_training(dense, Logger(LogOptions{.rank = 1}));
      UpcycleOptions up;
      up.experts = 4;
      up.top_k = 2;
      up.shared_experts = 1;
      up.shared_expert_gate = true;
      const UpcycleSummary s = upcycle_checkpoint(dir / "dense", up, dir / "moe");
      EXPECT_LT(s.logit_deviation, 1e-5);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "preparing the upcycled checkpoint: " << e.what();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return dir;
}

struct Layout {
  int tp, dp, ep;
  std::string name() const {
    return "tp" + std::to_string(tp) + "dp" + std::to_string(dp) + "ep" + std::to_string(ep);
  }
};

TEST(UpcycleLayouts, UpcycledModelTrainsUnderExpertParallelLayoutsLikeOneRank) {
  const fs::path dir = upcycled_dir();
  const std::int64_t steps = 6;
  RunOptions from_moe = options(dir, "reference", steps);
  from_moe.init_path = (dir / "moe").string();
  const std::vector<double> reference = train_on_rank0(from_moe);
  ASSERT_EQ(reference.size(), static_cast<std::size_t>(steps));

  // Function preservation through the whole training pipeline: step 1 sees the same batch.
  RunOptions from_dense = options(dir, "dense_continued", 1);
  from_dense.warmup = 0;
  from_dense.init_path = (dir / "dense").string();
  const std::vector<double> dense = train_on_rank0(from_dense);
  ASSERT_EQ(dense.size(), 1u);
  // Exact to float rounding (measured 7e-10 relative); noise 0.3 on the experts moves it 3.5e-6.
  EXPECT_NEAR(reference[0], dense[0], 1e-7 * dense[0]) << "the upcycled model's first loss";
  EXPECT_LT(reference.back(), reference.front()) << "the upcycled model learns";

  const std::vector<Layout> layouts = world_size() == 2 ? std::vector<Layout>{{1, 2, 2}}
                                      : world_size() == 4
                                          ? std::vector<Layout>{{2, 2, 2}, {1, 4, 4}}
                                          : std::vector<Layout>{};
  for (const Layout& layout : layouts) {
    RunOptions o = options(dir, layout.name(), steps);
    o.init_path = (dir / "moe").string();
    o.tp = layout.tp;
    o.dp = layout.dp;
    o.ep = layout.ep;
    const std::vector<double> losses = test::losses_over_world(o);
    ASSERT_EQ(losses.size(), reference.size()) << layout.name();
    for (std::size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference[i], 1e-5 * std::abs(reference[i]))
          << layout.name() << " step " << i + 1 << " on rank " << world_rank();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

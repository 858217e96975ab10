// Layout invariance: the same seed, data and global batch give the single-rank loss curve on
// every tensor/data-parallel layout that fits this world, and a checkpoint saved under the
// layout loads into the single-rank model (resharding) with the single-rank run's weights.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "models/init.hpp"
#include "parallel/mpi_communicator.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// One directory for all ranks, made by rank 0.
fs::path shared_dir() {
  long id = world_rank() == 0 ? static_cast<long>(::getpid()) : 0;
  MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  const fs::path dir = fs::temp_directory_path() / ("metamorph-layouts-" + std::to_string(id));
  if (world_rank() == 0) {
    fs::create_directories(dir);
    std::string text;
    for (int d = 0; d < 200; ++d)
      text += "line " + std::to_string(d * 7919 % 1000) + " of the corpus, with words " +
              std::string(static_cast<std::size_t>(d % 13), 'x') + ".\n\n";
    test::write_file(dir / "corpus.txt", text);
    data::PrepareOptions p;
    p.input = (dir / "corpus.txt").string();
    p.tokenizer = "byte";
    p.vocab_size = 260;  // divisible by 4 tensor-parallel ranks
    p.output_prefix = (dir / "data").string();
    p.validation_fraction = 0.05;
    data::prepare_dataset(p);
    test::write_file(dir / "model.json", R"({"vocab_size": 260, "hidden_size": 32,
      "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 4, "max_position_embeddings": 64, "attention_bias": true,
      "model_type": "qwen3"})");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return dir;
}

RunOptions options(const fs::path& dir, const std::string& save) {
  RunOptions o;
  o.model_path = (dir / "model.json").string();
  o.data_prefix = (dir / "data").string();
  o.steps = 10;
  o.seq = 16;
  o.micro_batch = 1;
  o.global_batch = 4;
  o.lr = 3e-3;
  o.warmup = 2;
  o.eval_every = 5;
  o.save_dir = (dir / save).string();
  return o;
}

std::vector<float> single_rank_weights(const fs::path& dir, const std::string& save) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = load_model_config((dir / "model.json").string());
  ParameterSet params = make_parameters(cpu, config);
  LoadOptions load;
  load.with_optimizer = false;
  load_checkpoint(dir / save, params, load);
  std::vector<float> all;
  for (const auto& p : params.all())
    all.insert(all.end(), p.value.data<float>(), p.value.data<float>() + p.value.numel());
  return all;
}

TEST(LayoutInvariance, EveryTensorAndDataParallelLayoutMatchesOneRank) {
  const fs::path dir = shared_dir();
  const int rank = world_rank(), size = world_size();
  const Logger quiet(LogOptions{.rank = 1});
  // The reference: every rank runs the one-rank training itself (rank 0 keeps its checkpoint).
  std::vector<double> reference;
  run_training(options(dir, "reference-" + std::to_string(rank)), quiet,
               [&](const StepMetrics& m) { reference.push_back(m.loss); });
  const auto reference_weights = single_rank_weights(dir, "reference-" + std::to_string(rank));

  std::vector<std::pair<int, int>> layouts;  // tp, dp
  for (int tp = 1; tp <= size; ++tp)
    if (size % tp == 0) layouts.emplace_back(tp, size / tp);
  for (const auto& [tp, dp] : layouts) {
    const std::string name = "tp" + std::to_string(tp) + "dp" + std::to_string(dp);
    RunOptions o = options(dir, name);
    o.tp = tp;
    o.dp = dp;
    std::vector<double> losses;
    run_training(o, quiet, [&](const StepMetrics& m) { losses.push_back(m.loss); },
                 MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
    ASSERT_EQ(losses.size(), reference.size()) << name;
    for (std::size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference[i], 1e-5 * std::abs(reference[i]))
          << name << " step " << i + 1 << " on rank " << rank;
    MPI_Barrier(MPI_COMM_WORLD);
    const auto weights = single_rank_weights(dir, name);
    ASSERT_EQ(weights.size(), reference_weights.size());
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < weights.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::abs(weights[i] - reference_weights[i])));
      scale = std::max(scale, static_cast<double>(std::abs(reference_weights[i])));
    }
    EXPECT_LT(diff / scale, 1e-5) << name << ": final weights, gathered from the shards";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}


// Save under one layout, resume under others: the continuation matches the uninterrupted
// single-rank run, and resuming under the saving layout itself is bit-exact.
TEST(LayoutInvariance, ResumeUnderAnotherLayoutContinuesTheSingleRankRun) {
  const fs::path dir = shared_dir();
  const int rank = world_rank(), size = world_size();
  const Logger quiet(LogOptions{.rank = 1});
  auto fifteen = [&](const std::string& save) {
    RunOptions o = options(dir, save);
    o.steps = 15;
    o.save_every = 10;
    return o;
  };
  std::vector<double> reference;
  run_training(fifteen("ref15-" + std::to_string(rank)), quiet,
               [&](const StepMetrics& m) { reference.push_back(m.loss); });

  // The saving layout: TP over two ranks, DP over the rest.
  RunOptions saving = fifteen("saved");
  saving.tp = 2;
  saving.dp = size / 2;
  std::vector<double> uninterrupted;
  run_training(saving, quiet, [&](const StepMetrics& m) { uninterrupted.push_back(m.loss); },
               MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    // What a job preempted right after step 10's save leaves behind.
    fs::remove_all(dir / "saved" / "step_00000015");
    test::write_file(dir / "saved" / "latest", "step_00000010\n");
  }
  MPI_Barrier(MPI_COMM_WORLD);

  std::vector<std::pair<int, int>> resume_layouts = {{saving.tp, saving.dp}, {1, size}, {size, 1}};
  for (const auto& [tp, dp] : resume_layouts) {
    const std::string name = "tp" + std::to_string(tp) + "dp" + std::to_string(dp);
    RunOptions o = fifteen("resumed-" + name);
    o.model_path.clear();
    o.resume_path = (dir / "saved").string();
    o.save_every = 0;
    o.tp = tp;
    o.dp = dp;
    std::vector<double> losses;
    run_training(o, quiet, [&](const StepMetrics& m) { losses.push_back(m.loss); },
                 MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
    ASSERT_EQ(losses.size(), 5u) << name;
    for (std::size_t i = 0; i < 5; ++i) {
      EXPECT_NEAR(losses[i], reference[10 + i], 1e-5 * std::abs(reference[10 + i]))
          << "resumed under " << name << ", step " << 11 + i;
      if (tp == saving.tp && dp == saving.dp) {
        EXPECT_EQ(losses[i], uninterrupted[10 + i]) << "same-layout resume must be bit-exact";
      }
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

// Layout invariance: the same seed, data and global batch give the single-rank loss curve on
// every tensor/pipeline/data-parallel layout that fits this world (with and without ZeRO-1), and a
// checkpoint saved under the layout loads into the single-rank model (resharding) with the
// single-rank run's weights.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "parallel/layout.hpp"
#include "parallel/mpi_communicator.hpp"
#include "parallel/tensor_parallel_group.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

// One directory for all ranks, made by rank 0.
fs::path shared_dir() {
  return test::shared_corpus_dir("metamorph-layouts-", 260, [](const fs::path& dir) {
    test::write_file(dir / "model.json", R"({"vocab_size": 260, "hidden_size": 32,
      "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
      "num_key_value_heads": 4, "max_position_embeddings": 64, "attention_bias": true,
      "model_type": "qwen3"})");
  });
}

// Every tp x pp x dp of `size` ranks the test model splits over (4 heads, 4 layers).
std::vector<Layout> layouts_of(int size) {
  std::vector<Layout> out;
  for (int tp = 1; tp <= 4; tp *= 2)
    for (int pp = 1; pp <= 4; ++pp)
      if (size % (tp * pp) == 0 && 8 % (size / (tp * pp)) == 0)
        out.push_back({tp, pp, size / (tp * pp)});
  return out;
}

std::string layout_name(const Layout& l) {
  return "tp" + std::to_string(l.tp) + "pp" + std::to_string(l.pp) + "dp" + std::to_string(l.dp);
}

RunOptions options(const fs::path& dir, const std::string& save) {
  RunOptions o;
  o.model_path = (dir / "model.json").string();
  o.data_prefix = (dir / "data").string();
  o.steps = 10;
  o.seq = 16;
  o.micro_batch = 1;
  o.global_batch = 8;
  o.lr = 3e-3;
  o.warmup = 2;
  o.eval_every = 5;
  o.save_dir = (dir / save).string();
  o.grad_bucket_elements = 1000;  // several buckets, reduced while the backward still runs
  return o;
}

// Every weight of the checkpoint `save` in `dir` (beside its model.json), resharded to one rank.
std::vector<float> single_rank_weights(const fs::path& dir, const std::string& save) {
  return test::single_rank_weights(load_model_config((dir / "model.json").string()), dir / save);
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

  std::vector<std::pair<Layout, bool>> runs;  // layout, ZeRO-1
  for (const Layout& layout : layouts_of(size)) {
    runs.emplace_back(layout, false);
    if (layout.dp > 1) runs.emplace_back(layout, true);
  }
  for (const auto& [layout, zero1] : runs) {
    const std::string name = layout_name(layout) + (zero1 ? "z1" : "");
    RunOptions o = options(dir, name);
    o.tp = layout.tp;
    o.pp = layout.pp;
    o.dp = layout.dp;
    o.zero1 = zero1;
    const std::vector<double> losses = test::losses_over_world(o);
    ASSERT_EQ(losses.size(), reference.size()) << name;
    for (std::size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference[i], 1e-5 * std::abs(reference[i]))
          << name << " step " << i + 1 << " on rank " << rank;
    MPI_Barrier(MPI_COMM_WORLD);
    const auto weights = single_rank_weights(dir, name);
    ASSERT_EQ(weights.size(), reference_weights.size());
    EXPECT_LT(test::relative_max_difference(weights, reference_weights), 1e-5)
        << name << ": final weights, gathered from the shards";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

// Save under one layout, resume under others (all-DP, tp4, pp4, one rank): the continuation
// matches the uninterrupted single-rank run, and resuming under the saving layout is bit-exact.
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

  // The saving layout: tp2 pp2 dp2 with ZeRO-1 on 8 ranks, tp2 pp2 on 4, tp2 on 2.
  RunOptions saving = fifteen("saved");
  saving.tp = 2;
  saving.pp = size >= 4 ? 2 : 1;
  saving.dp = size / (saving.tp * saving.pp);
  saving.zero1 = saving.dp > 1;
  std::vector<double> uninterrupted;
  run_training(
      saving, quiet, [&](const StepMetrics& m) { uninterrupted.push_back(m.loss); },
      MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    // What a job preempted right after step 10's save leaves behind.
    fs::remove_all(dir / "saved" / "step_00000015");
    test::write_file(dir / "saved" / "latest", "step_00000010\n");
  }
  MPI_Barrier(MPI_COMM_WORLD);

  auto check = [&](const std::vector<double>& losses, const std::string& name, bool same_layout) {
    ASSERT_EQ(losses.size(), 5u) << name;
    for (std::size_t i = 0; i < 5; ++i) {
      EXPECT_NEAR(losses[i], reference[10 + i], 1e-5 * std::abs(reference[10 + i]))
          << "resumed under " << name << ", step " << 11 + i;
      if (same_layout) {
        EXPECT_EQ(losses[i], uninterrupted[10 + i]) << "same-layout resume must be bit-exact";
      }
    }
  };
  auto resumed = [&](const std::string& save) {
    RunOptions o = fifteen(save);
    o.model_path.clear();
    o.resume_path = (dir / "saved").string();
    o.save_every = 0;
    return o;
  };
  std::vector<Layout> resume_layouts = {{saving.tp, saving.pp, saving.dp}, {1, 1, size}};
  if (size >= 4) resume_layouts.push_back({4, 1, size / 4});
  if (size >= 4) resume_layouts.push_back({1, 4, size / 4});
  for (const Layout& layout : resume_layouts) {
    const std::string name = layout_name(layout);
    RunOptions o = resumed("resumed-" + name);
    o.tp = layout.tp;
    o.pp = layout.pp;
    o.dp = layout.dp;
    const bool same = layout.tp == saving.tp && layout.pp == saving.pp && layout.dp == saving.dp;
    o.zero1 = same && saving.zero1;
    check(test::losses_over_world(o), name, same);
  }
  // And on one rank alone, as a single-process job would.
  if (rank == 0) {
    std::vector<double> losses;
    run_training(resumed("resumed-single"), quiet,
                 [&](const StepMetrics& m) { losses.push_back(m.loss); });
    check(losses, "one rank", false);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

// The vocabulary-parallel embedding and cross-entropy (and every other sharded parameter) get
// the gradients of the same slice of the single-rank model, after one forward and backward.
TEST(LayoutInvariance, TensorParallelGradientsEqualTheSingleRankSlices) {
  const int rank = world_rank(), size = world_size();
  if (size > 4) GTEST_SKIP() << "the test model has 4 heads";
  const ModelConfig config = model_config_from_json({{"vocab_size", 64},
                                                     {"hidden_size", 32},
                                                     {"intermediate_size", 48},
                                                     {"num_hidden_layers", 2},
                                                     {"num_attention_heads", 4},
                                                     {"num_key_value_heads", 4},
                                                     {"tie_word_embeddings", false}});
  Arena arena;
  CpuBackend cpu(arena);
  Tensor tokens = cpu.empty({2, 8}, DType::i32), targets = cpu.empty({2, 8}, DType::i32);
  for (int i = 0; i < 16; ++i) {
    tokens.data<std::int32_t>()[i] = (i * 37 + 5) % 64;
    targets.data<std::int32_t>()[i] = (i * 11 + 3) % 64;
  }
  ParameterSet whole = make_parameters(cpu, config);
  init_parameters(whole, config, 9);
  Transformer single(cpu, config, whole);
  single.forward_backward(tokens, targets, 1.0f / 16);

  auto comm = MpiCommunicator::duplicate(MPI_COMM_WORLD, "tp", MpiOptions{});
  const TensorParallel tp = tensor_parallel_over(*comm);
  ParameterSet shards = make_parameters(cpu, config, tp);
  init_parameters(shards, config, 9);
  Transformer sharded(cpu, config, shards, {}, tp);
  const LossSum loss = sharded.forward_backward(tokens, targets, 1.0f / 16);
  EXPECT_GT(loss.sum, 0.0);

  for (const auto& p : shards.all()) {
    const Parameter* full = whole.find(p.name);
    ASSERT_NE(full, nullptr);
    const std::int64_t rows = p.grad.dim(0),
                       cols = p.grad.numel() / std::max<std::int64_t>(1, rows);
    const std::int64_t full_cols = full->grad.numel() / full->grad.dim(0);
    const std::int64_t col0 = p.offset.size() > 1 ? p.offset[1] : 0;
    double diff = 0, scale = 1e-12;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) {
        const float mine = p.grad.data<float>()[r * cols + c];
        const float ref = full->grad.data<float>()[(r + p.offset[0]) * full_cols + c + col0];
        diff = std::max(diff, static_cast<double>(std::abs(mine - ref)));
        scale = std::max(scale, static_cast<double>(std::abs(ref)));
      }
    EXPECT_LT(diff / scale, 1e-5) << p.name << " on rank " << rank;
  }
}

}  // namespace
}  // namespace metamorph

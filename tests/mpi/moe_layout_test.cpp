// MoE models under pipeline and data parallelism (no expert parallelism): the same seed, data
// and global batch give the single-rank loss curve and final weights, including the balancing
// biases, whose per-expert loads are summed over the data-parallel replicas before each update.
// Tensor parallelism too (expert-parallel layouts: moe_ep_layout_test.cpp).
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "models/init.hpp"
#include "parallel/mpi_communicator.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

fs::path shared_dir() {
  return test::shared_corpus_dir("metamorph-moe-layouts-", 258, [](const fs::path& dir) {
    // Sigmoid scoring (a moving, non-trainable bias), a gated shared expert, a capacity that
    // drops tokens, a dense first layer.
    test::write_file(dir / "model.json", R"({"model_type": "deepseek_v3", "vocab_size": 258,
      "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_shared_experts": 1,
      "scoring_func": "sigmoid", "first_k_dense_replace": 1, "router_z_loss_coef": 0.001,
      "router_aux_loss_coef": 0.01,
      "metamorph": {"capacity_factor": 1.25, "shared_expert_gate": true,
                    "bias_update_rate": 0.01}})");
  });
}

RunOptions options(const fs::path& dir, const std::string& save) {
  RunOptions o;
  o.model_path = (dir / "model.json").string();
  o.data_prefix = (dir / "data").string();
  o.steps = 6;
  o.seq = 16;
  o.micro_batch = 1;
  o.global_batch = 4;
  o.lr = 3e-3;
  o.warmup = 1;
  o.save_dir = (dir / save).string();
  return o;
}

// Every weight of the checkpoint `save` in `dir` (beside its model.json), resharded to one rank.
std::vector<float> weights(const fs::path& dir, const std::string& save) {
  return test::single_rank_weights(load_model_config((dir / "model.json").string()), dir / save);
}

TEST(MoeLayouts, PipelineAndDataParallelRunsMatchOneRank) {
  const fs::path dir = shared_dir();
  const int rank = world_rank();
  const Logger quiet(LogOptions{.rank = 1});
  std::vector<double> reference;
  run_training(options(dir, "reference-" + std::to_string(rank)), quiet,
               [&](const StepMetrics& m) { reference.push_back(m.loss); });
  const auto reference_weights = weights(dir, "reference-" + std::to_string(rank));
  struct Run {
    int pp, dp;
    bool zero1;
    int tp = 1;
  };
  for (const Run& r : {Run{1, 4, false}, Run{2, 2, false}, Run{4, 1, false}, Run{1, 4, true},
                       Run{1, 2, false, 2}}) {
    const std::string name = "tp" + std::to_string(r.tp) + "pp" + std::to_string(r.pp) + "dp" +
                             std::to_string(r.dp) + (r.zero1 ? "z1" : "");
    RunOptions o = options(dir, name);
    o.tp = r.tp;
    o.pp = r.pp;
    o.dp = r.dp;
    o.zero1 = r.zero1;
    const std::vector<double> losses = test::losses_over_world(o);
    ASSERT_EQ(losses.size(), reference.size()) << name;
    for (std::size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference[i], 1e-5 * std::abs(reference[i]))
          << name << " step " << i + 1 << " on rank " << rank;
    MPI_Barrier(MPI_COMM_WORLD);
    const auto w = weights(dir, name);
    ASSERT_EQ(w.size(), reference_weights.size());
    EXPECT_LT(test::relative_max_difference(w, reference_weights), 1e-5)
        << name << ": final weights";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

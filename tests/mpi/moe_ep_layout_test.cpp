// Expert-parallel layout invariance: an MoE model trained under ep / dp / tp / pp layouts gives
// the single-rank loss at every step (dropless routing) and the same final weights; a
// checkpoint saved under ep4 resumes under ep1, under tp2 ep2 and on one rank on the
// single-rank curve; benchmark-only balanced routing under ep2, tp2 ep2, pp2 ep2 likewise.
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
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

// A tiny Qwen2-MoE: 4 experts, top-2, a gated shared expert, in both layers.
fs::path shared_dir() {
  return test::shared_corpus_dir("metamorph-moe-", 260, [](const fs::path& dir) {
    test::write_file(dir / "model.json", R"({"vocab_size": 260, "hidden_size": 16,
      "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "model_type": "qwen2_moe",
      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
      "shared_expert_intermediate_size": 8, "norm_topk_prob": true,
      "router_aux_loss_coef": 0.01, "router_z_loss_coef": 0.001})");
    // Capacity 1.0 (slots are dropped), no aux or z loss (their per-rank means would differ
    // from one rank's mean over the same tokens).
    test::write_file(dir / "capacity.json", R"({"vocab_size": 260, "hidden_size": 16,
      "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "model_type": "qwen2_moe",
      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
      "norm_topk_prob": true, "router_aux_loss_coef": 0.0, "router_z_loss_coef": 0.0,
      "metamorph": {"capacity_factor": 1.0}})");
  });
}

RunOptions options(const fs::path& dir, const std::string& save, std::int64_t steps = 10) {
  return test::small_run_options(dir, save, steps);
}

struct MoeLayout {
  int tp = 1, pp = 1, dp = 1, ep = 1;
  bool zero1 = false;
  int etp = 0;  // 0: the same as tp
  bool recompute = false;
  std::string name() const {
    return "tp" + std::to_string(tp) + "pp" + std::to_string(pp) + "dp" + std::to_string(dp) +
           "ep" + std::to_string(ep) + (etp > 0 ? "etp" + std::to_string(etp) : "") +
           (zero1 ? "z1" : "") + (recompute ? "rc" : "");
  }
};

RunOptions with_layout(RunOptions o, const MoeLayout& l) {
  o.tp = l.tp;
  o.pp = l.pp;
  o.dp = l.dp;
  o.ep = l.ep;
  o.zero1 = l.zero1;
  o.etp = l.etp;
  o.recompute = l.recompute;
  return o;
}

// The single-rank run's losses, computed on rank 0 and shared with every rank.
std::vector<double> reference_losses(const RunOptions& o) {
  std::vector<double> losses(static_cast<std::size_t>(o.steps), 0.0);
  if (world_rank() == 0) {
    std::size_t i = 0;
    run_training(o, Logger(LogOptions{.rank = 1}),
                 [&](const StepMetrics& m) { losses.at(i++) = m.loss; });
  }
  MPI_Bcast(losses.data(), static_cast<int>(losses.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return losses;
}

// Every weight of the checkpoint `save` in `dir` (beside its model.json), resharded to one rank.
std::vector<float> single_rank_weights(const fs::path& dir, const std::string& save) {
  return test::single_rank_weights(load_model_config((dir / "model.json").string()), dir / save);
}

std::vector<MoeLayout> layouts_of(int size) {
  switch (size) {
    case 2:  // ep2 (+ ZeRO-1, + recompute: the backward re-runs the exchange); each expert
             // split over two replicas (expert-TP 2, no EP)
      return {{1, 1, 2, 2, false},
              {1, 1, 2, 2, true},
              {1, 1, 2, 2, false, 0, true},
              {1, 1, 2, 1, false, 2}};
    case 4:  // ep4; ep2 with two expert-DP replicas (+ ZeRO-1); tp2 ep2; pp2 ep2; ep2 etp2
      return {{1, 1, 4, 4, false}, {1, 1, 4, 2, false}, {1, 1, 4, 2, true},
              {2, 1, 2, 2, false}, {1, 2, 2, 2, false}, {1, 1, 4, 2, false, 2}};
    case 8:  // tp2 pp2 ep2; ep4 with expert-TP 2 (= tp); pp2 ep2 with expert-TP 2 across replicas
      return {{2, 2, 2, 2, false}, {2, 1, 4, 4, false}, {1, 2, 4, 2, false, 2}};
    default:
      return {};
  }
}

TEST(MoeLayoutInvariance, ExpertParallelLayoutsMatchOneRank) {
  const fs::path dir = shared_dir();
  const int rank = world_rank();
  const std::vector<double> reference = reference_losses(options(dir, "reference"));
  MPI_Barrier(MPI_COMM_WORLD);
  const auto reference_weights = single_rank_weights(dir, "reference");
  for (const MoeLayout& layout : layouts_of(world_size())) {
    const std::string name = layout.name();
    const std::vector<double> losses =
        test::losses_over_world(with_layout(options(dir, name), layout));
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

// Saved under ep4 (dp4, ZeRO-1 over the dense parameters) at step 10 of 15; resumed under ep1
// with ZeRO-1 (optimizer rows of every expert resharded over dp4),
// under tp2 ep2 and on one rank, steps 11 to 15 follow the uninterrupted single-rank run.
TEST(MoeLayoutInvariance, CheckpointSavedUnderEp4ResumesUnderOtherLayouts) {
  if (world_size() != 4) GTEST_SKIP() << "runs on 4 ranks";
  const fs::path dir = shared_dir();
  const int rank = world_rank();
  const std::vector<double> reference = reference_losses(options(dir, "ref15", 15));
  RunOptions saving = with_layout(options(dir, "saved", 15), {1, 1, 4, 4, true});
  saving.save_every = 10;
  const std::vector<double> uninterrupted = test::losses_over_world(saving);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    fs::remove_all(dir / "saved" / "step_00000015");
    test::write_file(dir / "saved" / "latest", "step_00000010\n");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  auto resumed = [&](const std::string& save) {
    RunOptions o = options(dir, save, 15);
    o.model_path.clear();
    o.resume_path = (dir / "saved").string();
    return o;
  };
  auto check = [&](const std::vector<double>& losses, const std::string& name) {
    ASSERT_EQ(losses.size(), 5u) << name;
    for (std::size_t i = 0; i < 5; ++i)
      EXPECT_NEAR(losses[i], reference[10 + i], 1e-5 * std::abs(reference[10 + i]))
          << "resumed under " << name << ", step " << 11 + i << " on rank " << rank;
  };
  for (const MoeLayout& layout : {MoeLayout{1, 1, 4, 1, true}, MoeLayout{2, 1, 2, 2, false}})
    check(test::losses_over_world(with_layout(resumed("resumed-" + layout.name()), layout)),
          layout.name());
  if (rank == 0) {
    std::vector<double> losses;
    run_training(resumed("resumed-single"), Logger(LogOptions{.rank = 1}),
                 [&](const StepMetrics& m) { losses.push_back(m.loss); });
    check(losses, "one rank");
  }
  // The saving layout itself continues bit-exactly.
  const std::vector<double> again =
      test::losses_over_world(with_layout(resumed("resumed-same"), {1, 1, 4, 4, true}));
  ASSERT_EQ(again.size(), 5u);
  for (std::size_t i = 0; i < 5; ++i)
    EXPECT_EQ(again[i], uninterrupted[10 + i]) << "step " << 11 + i;
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

// Capacity is counted over the EP group: two replicas of one sequence each, whose experts are
// split over both, drop exactly what one rank drops on a micro-batch of both sequences.
TEST(MoeLayoutInvariance, CapacityOverTheExpertParallelGroupMatchesOneRank) {
  if (world_size() != 2) GTEST_SKIP() << "runs on 2 ranks";
  const fs::path dir = shared_dir();
  RunOptions single = options(dir, "capacity-single");
  single.model_path = (dir / "capacity.json").string();
  single.global_batch = 2;
  single.micro_batch = 2;
  const std::vector<double> reference = reference_losses(single);
  RunOptions split = with_layout(options(dir, "capacity-ep2"), {1, 1, 2, 2, false});
  split.model_path = single.model_path;
  split.global_batch = 2;
  split.micro_batch = 1;
  const std::vector<double> losses = test::losses_over_world(split);
  ASSERT_EQ(losses.size(), reference.size());
  for (std::size_t i = 0; i < losses.size(); ++i)
    EXPECT_NEAR(losses[i], reference[i], 1e-5 * std::abs(reference[i])) << "step " << i + 1;
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

// Benchmark-only balanced routing (--moe-force-balance) under ep2 (2 ranks), tp2 ep2 and pp2 ep2
// (4 ranks): the same losses and final weights as one rank with the flag, every expert the same
// rows in every step, and weights unlike the router's own routing's (the flag reaches the blocks).
TEST(MoeLayoutInvariance, ForcedBalancedRoutingUnderExpertParallelismMatchesOneRank) {
  if (world_size() != 2 && world_size() != 4) GTEST_SKIP() << "runs on 2 or 4 ranks";
  const fs::path dir = shared_dir();
  const int rank = world_rank();
  const std::int64_t steps = 4;
  RunOptions single = options(dir, "forced-reference", steps);
  single.moe_force_balance = true;
  auto uneven_layers = [](const StepMetrics& m) {
    int uneven = 0;
    for (const MoeLayerMetrics& l : m.moe) uneven += l.tokens_min != l.tokens_max;
    return uneven;
  };
  std::vector<double> reference(static_cast<std::size_t>(steps), 0.0);
  if (rank == 0) {
    std::size_t i = 0;
    run_training(single, Logger(LogOptions{.rank = 1}), [&](const StepMetrics& m) {
      reference.at(i++) = m.loss;
      EXPECT_EQ(m.moe.size(), 2u);
      EXPECT_EQ(uneven_layers(m), 0) << "one rank, step " << m.step;
    });
    // The router's own routing: uneven loads, and other experts trained (at this tiny init the
    // losses differ by less than the layouts' tolerance; the weights by far more).
    int routed_uneven = 0;
    run_training(options(dir, "routed", steps), Logger(LogOptions{.rank = 1}),
                 [&](const StepMetrics& m) { routed_uneven += uneven_layers(m); });
    EXPECT_GT(routed_uneven, 0);
    EXPECT_GT(test::relative_max_difference(single_rank_weights(dir, "routed"),
                                            single_rank_weights(dir, "forced-reference")),
              1e-3)
        << "forced routing trains the weights the router's own routing trains";
  }
  MPI_Bcast(reference.data(), static_cast<int>(reference.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  MPI_Barrier(MPI_COMM_WORLD);
  const auto reference_weights = single_rank_weights(dir, "forced-reference");
  const std::vector<MoeLayout> layouts =
      world_size() == 2 ? std::vector<MoeLayout>{{1, 1, 2, 2, false}}
                        : std::vector<MoeLayout>{{2, 1, 2, 2, false}, {1, 2, 2, 2, false}};
  for (const MoeLayout& layout : layouts) {
    const std::string name = "forced-" + layout.name();
    RunOptions o = with_layout(options(dir, name, steps), layout);
    o.moe_force_balance = true;
    std::vector<double> losses;
    run_training(
        o, Logger(LogOptions{.rank = 1}),
        [&](const StepMetrics& m) {
          losses.push_back(m.loss);
          if (rank == 0) {
            EXPECT_EQ(uneven_layers(m), 0) << name << " step " << m.step;
          }
        },
        MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
    ASSERT_EQ(losses.size(), reference.size()) << name;
    for (std::size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference[i], 1e-5 * std::abs(reference[i]))
          << name << " step " << i + 1 << " on rank " << rank;
    MPI_Barrier(MPI_COMM_WORLD);
    EXPECT_LT(test::relative_max_difference(single_rank_weights(dir, name), reference_weights),
              1e-5)
        << name << ": final weights, gathered from the shards";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

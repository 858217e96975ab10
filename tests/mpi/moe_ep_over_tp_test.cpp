// Expert parallelism across the TP group (--tp 2 --etp 1 --ep 2): each TP rank holds whole
// experts and runs them on its segment of the routed rows, the layer's TP all-reduce sums the
// ranks' partial outputs. Against the single-rank run: losses, MoE metrics (aux and z loss,
// tokens per expert, replicated over the group, not summed twice) and final weights under
// tp2 etp1 ep2 (+ recompute, + interleaved pairs; 2 ranks), tp2 dp2 etp1 ep2 (+ ZeRO-1) and
// tp2 pp2 etp1 ep2 (4 ranks); a capacity factor and forced balanced routing likewise; checkpoints
// saved under tp2 etp1 ep2 load bit-exactly into one rank's model and into tp2's (expert-TP = TP)
// shards, resume under both, and a tp2 checkpoint resumes under tp2 etp1 ep2.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <filesystem>

#include "models/init.hpp"
#include "models/pipeline_stage.hpp"
#include "models/tensor_parallel.hpp"
#include "parallel/mpi_communicator.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

fs::path shared_dir() {
  return test::shared_corpus_dir("metamorph-ep-over-tp-", 260, [](const fs::path& dir) {
    test::write_file(dir / "model.json", test::kTinyMoeJson);
    // Capacity 1.0 (slots are dropped); the tokens of a TP group are one rank's tokens, so the
    // router losses may stay on.
    test::write_file(dir / "capacity.json", R"({"vocab_size": 260, "hidden_size": 16,
      "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "model_type": "qwen2_moe",
      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
      "shared_expert_intermediate_size": 8, "norm_topk_prob": true,
      "router_aux_loss_coef": 0.01, "router_z_loss_coef": 0.001,
      "metamorph": {"capacity_factor": 1.0}})");
    // Sigmoid scoring with the balancing bias, a gated shared expert, capacity, a dense first
    // layer.
    test::write_file(dir / "biased.json", R"({"model_type": "deepseek_v3", "vocab_size": 260,
      "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 8, "n_shared_experts": 1,
      "scoring_func": "sigmoid", "first_k_dense_replace": 1, "router_z_loss_coef": 0.001,
      "router_aux_loss_coef": 0.01,
      "metamorph": {"capacity_factor": 1.25, "shared_expert_gate": true,
                    "bias_update_rate": 0.01}})");
  });
}

RunOptions options(const fs::path& dir, const std::string& save, std::int64_t steps = 8) {
  return test::small_run_options(dir, save, steps);
}

// tp2 with whole experts spread over the TP group.
RunOptions over_tp(RunOptions o, int dp = 1) {
  o.tp = 2;
  o.dp = dp;
  o.etp = 1;
  o.ep = 2;
  return o;
}

struct TrainedRun {
  std::vector<double> losses;
  std::vector<StepMetrics> metrics;  // rank 0's
};

TrainedRun train(const RunOptions& o, bool over_world) {
  TrainedRun run;
  auto on_step = [&](const StepMetrics& m) {
    run.losses.push_back(m.loss);
    run.metrics.push_back(m);
  };
  if (over_world)
    run_training(o, Logger(LogOptions{.rank = 1}), on_step,
                 MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
  else
    run_training(o, Logger(LogOptions{.rank = 1}), on_step);
  return run;
}

// The single-rank run on rank 0; its losses shared with every rank.
TrainedRun reference_run(const RunOptions& o) {
  TrainedRun run;
  if (world_rank() == 0) run = train(o, false);
  run.losses.resize(static_cast<std::size_t>(o.steps));
  MPI_Bcast(run.losses.data(), static_cast<int>(run.losses.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return run;
}

// Every weight of the checkpoint `save` in `dir` (beside its model.json), resharded to one rank.
std::vector<float> single_rank_weights(const fs::path& dir, const std::string& save) {
  return test::single_rank_weights(load_model_config((dir / "model.json").string()), dir / save);
}

// aux, z loss and entropy are compared only without data parallelism: they are reported as the
// mean over DP rank 0's own micro-batches.
void expect_same_run(const TrainedRun& got, const TrainedRun& reference, const std::string& name,
                     bool same_micro_batches = true) {
  ASSERT_EQ(got.losses.size(), reference.losses.size()) << name;
  for (std::size_t i = 0; i < got.losses.size(); ++i)
    EXPECT_NEAR(got.losses[i], reference.losses[i], 1e-5 * std::abs(reference.losses[i]))
        << name << " step " << i + 1 << " on rank " << world_rank();
  if (world_rank() != 0) return;
  // The router's statistics are the same on every rank of the TP group: reported once.
  ASSERT_EQ(got.metrics.size(), reference.metrics.size()) << name;
  for (std::size_t i = 0; i < got.metrics.size(); ++i) {
    // Every expert counted once in the norm (summed over the EP = TP group).
    EXPECT_NEAR(got.metrics[i].grad_norm, reference.metrics[i].grad_norm,
                1e-5 * reference.metrics[i].grad_norm)
        << name << " step " << i + 1;
    const auto& a = got.metrics[i].moe;
    const auto& b = reference.metrics[i].moe;
    ASSERT_EQ(a.size(), b.size()) << name << " step " << i + 1;
    for (std::size_t l = 0; l < a.size(); ++l) {
      EXPECT_EQ(a[l].tokens_per_expert, b[l].tokens_per_expert) << name << " layer " << l;
      if (!same_micro_batches) continue;
      EXPECT_NEAR(a[l].aux_loss, b[l].aux_loss, 1e-5 * std::abs(b[l].aux_loss)) << name;
      EXPECT_NEAR(a[l].z_loss, b[l].z_loss, 1e-5 * std::abs(b[l].z_loss)) << name;
      EXPECT_NEAR(a[l].router_entropy, b[l].router_entropy, 1e-5) << name;
      EXPECT_EQ(a[l].drop_rate, b[l].drop_rate) << name;
    }
  }
}

TEST(MoeExpertsOverTp, LayoutsMatchOneRank) {
  const fs::path dir = shared_dir();
  const TrainedRun reference = reference_run(options(dir, "reference"));
  MPI_Barrier(MPI_COMM_WORLD);
  const auto reference_weights = single_rank_weights(dir, "reference");
  std::vector<std::pair<std::string, RunOptions>> layouts;
  if (world_size() == 2) {
    layouts.emplace_back("tp2etp1ep2", over_tp(options(dir, "tp2etp1ep2")));
    RunOptions recompute = over_tp(options(dir, "tp2etp1ep2rc"));
    recompute.recompute = true;
    layouts.emplace_back("tp2etp1ep2rc", recompute);
    RunOptions pairs = over_tp(options(dir, "tp2etp1ep2pairs"));
    pairs.interleave_pairs = true;
    layouts.emplace_back("tp2etp1ep2pairs", pairs);
  } else if (world_size() == 4) {
    layouts.emplace_back("tp2dp2etp1ep2", over_tp(options(dir, "tp2dp2etp1ep2"), 2));
    RunOptions zero1 = over_tp(options(dir, "tp2dp2etp1ep2z1"), 2);
    zero1.zero1 = true;
    layouts.emplace_back("tp2dp2etp1ep2z1", zero1);
    RunOptions stages = over_tp(options(dir, "tp2pp2etp1ep2"));
    stages.pp = 2;
    layouts.emplace_back("tp2pp2etp1ep2", stages);
  }
  for (const auto& [name, o] : layouts) {
    expect_same_run(train(o, true), reference, name, o.dp == 1);
    MPI_Barrier(MPI_COMM_WORLD);
    EXPECT_LT(test::relative_max_difference(single_rank_weights(dir, name), reference_weights),
              1e-5)
        << name << ": final weights, gathered from the shards";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

// A capacity factor drops the same slots as one rank (the group's tokens are one rank's), the
// sigmoid router's balancing bias moves as on one rank, and benchmark-only balanced routing
// gives the single-rank run with the flag.
TEST(MoeExpertsOverTp, CapacityAndForcedBalanceMatchOneRank) {
  if (world_size() != 2) GTEST_SKIP() << "runs on 2 ranks";
  const fs::path dir = shared_dir();
  RunOptions capacity = options(dir, "capacity", 4);
  capacity.model_path = (dir / "capacity.json").string();
  const TrainedRun capacity_reference = reference_run(capacity);
  if (world_rank() == 0) {
    double dropped = 0;
    for (const auto& m : capacity_reference.metrics)
      for (const auto& l : m.moe) dropped += l.drop_rate;
    EXPECT_GT(dropped, 0) << "capacity 1.0 drops some slots";
  }
  RunOptions capacity_tp = over_tp(options(dir, "capacity-tp", 4));
  capacity_tp.model_path = capacity.model_path;
  expect_same_run(train(capacity_tp, true), capacity_reference, "capacity tp2etp1ep2");

  RunOptions biased = options(dir, "biased", 4);
  biased.model_path = (dir / "biased.json").string();
  const TrainedRun biased_reference = reference_run(biased);
  RunOptions biased_tp = over_tp(options(dir, "biased-tp", 4));
  biased_tp.model_path = biased.model_path;
  expect_same_run(train(biased_tp, true), biased_reference, "sigmoid bias tp2etp1ep2");

  RunOptions forced = options(dir, "forced", 4);
  forced.moe_force_balance = true;
  const TrainedRun forced_reference = reference_run(forced);
  RunOptions forced_tp = over_tp(options(dir, "forced-tp", 4));
  forced_tp.moe_force_balance = true;
  expect_same_run(train(forced_tp, true), forced_reference, "forced tp2etp1ep2");
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_LT(test::relative_max_difference(single_rank_weights(dir, "forced-tp"),
                                          single_rank_weights(dir, "forced")),
            1e-5);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

// Every value of every shard equals the whole model's at the shard's global indices (the shard
// is a block of the whole tensor at p.offset).
void expect_shards_of(const ParameterSet& shards, const ParameterSet& whole,
                      const std::string& name) {
  for (const auto& p : shards.all()) {
    const Parameter* w = whole.find(p.name);
    ASSERT_NE(w, nullptr) << p.name;
    const bool matrix = p.value.shape().size() == 2;
    const std::int64_t cols = matrix ? p.value.dim(1) : 1;
    const std::int64_t whole_cols = matrix ? w->value.dim(1) : 1;
    const std::int64_t row0 = p.offset[0], col0 = matrix ? p.offset[1] : 0;
    const float* s = p.value.data<float>();
    const float* v = w->value.data<float>();
    std::int64_t mismatches = 0;
    for (std::int64_t r = 0; r < p.value.dim(0); ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        mismatches += s[r * cols + c] != v[(row0 + r) * whole_cols + col0 + c];
    EXPECT_EQ(mismatches, 0) << name << ": " << p.name;
  }
}

// A checkpoint read into the shards of each rank of a tp2 layout (experts whole over the TP
// group, or split like the dense MLP), compared with the single-rank model read from it.
void expect_loads_bit_exactly(const fs::path& checkpoint, const ModelConfig& config) {
  Arena arena;
  CpuBackend cpu(arena);
  LoadOptions load;
  load.with_optimizer = false;
  ParameterSet whole = make_parameters(cpu, config);
  load_checkpoint(checkpoint, whole, load);
  for (int rank = 0; rank < 2; ++rank) {
    TensorParallel tp;
    tp.rank = rank;
    tp.size = 2;
    ExpertParallel whole_experts;  // tp2 etp1 ep2: EP rank = TP rank
    whole_experts.rank = rank;
    whole_experts.size = 2;
    whole_experts.tp_size = 1;
    ParameterSet over_tp_shards = make_parameters(cpu, config, tp, {}, whole_experts);
    load_checkpoint(checkpoint, over_tp_shards, load);
    expect_shards_of(over_tp_shards, whole, "tp2 etp1 ep2 rank " + std::to_string(rank));
    ParameterSet tp_shards = make_parameters(cpu, config, tp);  // experts split like the MLP
    load_checkpoint(checkpoint, tp_shards, load);
    expect_shards_of(tp_shards, whole, "tp2 rank " + std::to_string(rank));
  }
}

// Saved at step 5 of 8 under tp2 etp1 ep2: loads bit-exactly into one rank's and tp2's shards,
// and resumes under tp2 (expert-TP = TP) and on one rank on the uninterrupted single-rank
// curve; a checkpoint saved under tp2 resumes under tp2 etp1 ep2 likewise.
TEST(MoeExpertsOverTp, CheckpointsMoveBetweenLayouts) {
  if (world_size() != 2) GTEST_SKIP() << "runs on 2 ranks";
  const fs::path dir = shared_dir();
  const int rank = world_rank();
  const std::int64_t steps = 8, saved_at = 5;
  const TrainedRun reference = reference_run(options(dir, "reference", steps));
  auto save_at = [&](RunOptions o) {
    o.save_every = saved_at;
    train(o, true);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
      fs::remove_all(fs::path(o.save_dir) / "step_00000008");
      test::write_file(fs::path(o.save_dir) / "latest", "step_00000005\n");
    }
    MPI_Barrier(MPI_COMM_WORLD);
  };
  save_at(over_tp(options(dir, "saved-over-tp", steps)));
  RunOptions dense_split = options(dir, "saved-tp2", steps);
  dense_split.tp = 2;
  save_at(dense_split);
  if (rank == 0)
    expect_loads_bit_exactly(dir / "saved-over-tp" / "step_00000005",
                             load_model_config((dir / "model.json").string()));
  auto resumed = [&](const std::string& from, const std::string& save) {
    RunOptions o = options(dir, save, steps);
    o.model_path.clear();
    o.resume_path = (dir / from).string();
    return o;
  };
  auto check = [&](const std::vector<double>& losses, const std::string& name) {
    ASSERT_EQ(losses.size(), static_cast<std::size_t>(steps - saved_at)) << name;
    for (std::size_t i = 0; i < losses.size(); ++i) {
      const double want = reference.losses[static_cast<std::size_t>(saved_at) + i];
      EXPECT_NEAR(losses[i], want, 1e-5 * std::abs(want))
          << "resumed " << name << ", step " << saved_at + 1 + static_cast<std::int64_t>(i)
          << " on rank " << rank;
    }
  };
  RunOptions to_tp2 = resumed("saved-over-tp", "resumed-tp2");
  to_tp2.tp = 2;
  check(train(to_tp2, true).losses, "tp2 etp1 ep2 -> tp2");
  check(train(over_tp(resumed("saved-tp2", "resumed-over-tp")), true).losses,
        "tp2 -> tp2 etp1 ep2");
  if (rank == 0)
    check(train(resumed("saved-over-tp", "resumed-one"), false).losses, "tp2 etp1 ep2 -> one rank");
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

// Other expert-parallel layouts across TP are refused, naming the supported one.
TEST(MoeExpertsOverTp, OtherExpertLayoutsAcrossTpAreRefused) {
  if (world_size() != 4) GTEST_SKIP() << "runs on 4 ranks";
  const fs::path dir = shared_dir();
  RunOptions o = over_tp(options(dir, "refused", 2), 2);
  o.warmup = 0;
  o.ep = 4;  // experts over TP and DP together
  try {
    test::losses_over_world(o);
    ADD_FAILURE() << "tp2 dp2 etp1 ep4 was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--etp 1 --ep 2"), std::string::npos) << e.what();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

// Block-diffusion training under every parallel layout: an AR checkpoint continued as a
// block-diffusion LM ([MASK] added as a 261st vocabulary row, so the vocabulary-parallel split
// is uneven) gives the single-rank loss at every step and the same final weights under tp2,
// pp2, dp2 with ZeRO-1 and ep2 (2 ranks) and tp2 pp2 with tied embeddings (4 ranks); the
// optional AR term runs as a second model pass through the same schedule.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <filesystem>

#include "models/init.hpp"
#include "parallel/mpi_communicator.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

// Dense models (4 layers: two per pipeline stage), untied and tied (the last stage's copy of
// the embedding gets [MASK] too), and a tiny MoE (4 experts, top-2).
fs::path shared_dir() {
  return test::shared_corpus_dir("metamorph-diffusion-layouts-", 260, [](const fs::path& dir) {
    test::write_file(dir / "dense.json", R"({"vocab_size": 260, "hidden_size": 32,
      "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": false})");
    test::write_file(dir / "tied.json", R"({"vocab_size": 260, "hidden_size": 32,
      "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true})");
    test::write_file(dir / "moe.json", R"({"vocab_size": 260, "hidden_size": 16,
      "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "max_position_embeddings": 64, "model_type": "qwen2_moe",
      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
      "shared_expert_intermediate_size": 8, "norm_topk_prob": true,
      "router_aux_loss_coef": 0.01, "router_z_loss_coef": 0.001})");
  });
}

RunOptions common(const fs::path& dir, const std::string& save) {
  RunOptions o;
  o.data_prefix = (dir / "data").string();
  o.seq = 16;
  o.micro_batch = 2;
  o.global_batch = 8;
  o.lr = 3e-3;
  o.warmup = 1;
  o.eval_batches = 2;
  o.save_dir = (dir / save).string();
  o.grad_bucket_elements = 1000;
  return o;
}

// The AR starting point: `model` trained 3 steps on one rank (rank 0), saved as `save`.
void train_ar(const fs::path& dir, const std::string& model, const std::string& save) {
  if (world_rank() == 0) {
    RunOptions o = common(dir, save);
    o.model_path = (dir / model).string();
    o.steps = 3;
    run_training(o, Logger(LogOptions{.rank = 1}));
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// Block diffusion from the AR checkpoint: B = 4, position-dependent masks, stratified noise, an
// AR term, 6 steps with validation at step 3 and 6.
RunOptions diffusion_run(const fs::path& dir, const std::string& ar, const std::string& save) {
  RunOptions o = common(dir, save);
  o.init_path = (dir / ar).string();
  o.objective = "diffusion";
  o.diffusion.block_size = 4;
  o.diffusion.masking.schedule = diffusion::MaskSchedule::position_dependent;
  o.diffusion.noise.sampling = diffusion::NoiseSampling::stratified;
  o.diffusion.ar_weight = 0.5;
  o.steps = 6;
  o.eval_every = 3;
  return o;
}

struct RunLosses {
  std::vector<double> losses, val_losses;  // val 0 where the step did not validate
};

// Per-step training and validation losses of `o` on rank 0 alone, shared with every rank.
RunLosses reference_run(const RunOptions& o) {
  std::vector<double> both(static_cast<std::size_t>(2 * o.steps), 0.0);
  if (world_rank() == 0) {
    std::size_t i = 0;
    run_training(o, Logger(LogOptions{.rank = 1}), [&](const StepMetrics& m) {
      both.at(i) = m.loss;
      both.at(static_cast<std::size_t>(o.steps) + i) = m.val_loss.value_or(0.0);
      ++i;
    });
  }
  MPI_Bcast(both.data(), static_cast<int>(both.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  RunLosses r;
  r.losses.assign(both.begin(), both.begin() + o.steps);
  r.val_losses.assign(both.begin() + o.steps, both.end());
  return r;
}

// Every weight of a diffusion checkpoint (vocabulary grown by [MASK]) in the single-rank model.
std::vector<float> single_rank_weights(const fs::path& checkpoint) {
  const auto dir = resolve_checkpoint(checkpoint.string());
  const ModelConfig config = model_config_from_json(checkpoint::read_index_file(dir).state.config);
  EXPECT_EQ(config.vocab_size, 261) << "the checkpoint records the real vocabulary with [MASK]";
  return test::single_rank_weights(config, dir);
}

struct DiffusionLayout {
  int tp = 1, pp = 1, dp = 1, ep = 1;
  bool zero1 = false;
  std::string name() const {
    return "tp" + std::to_string(tp) + "pp" + std::to_string(pp) + "dp" + std::to_string(dp) +
           "ep" + std::to_string(ep) + (zero1 ? "z1" : "");
  }
};

void expect_layouts_match(const fs::path& dir, const std::string& ar,
                          const std::vector<DiffusionLayout>& layouts) {
  const RunLosses reference = reference_run(diffusion_run(dir, ar, ar + "-reference"));
  MPI_Barrier(MPI_COMM_WORLD);
  const auto reference_weights = single_rank_weights(dir / (ar + "-reference"));
  for (const DiffusionLayout& l : layouts) {
    RunOptions o = diffusion_run(dir, ar, ar + "-" + l.name());
    o.tp = l.tp;
    o.pp = l.pp;
    o.dp = l.dp;
    o.ep = l.ep;
    o.zero1 = l.zero1;
    RunLosses got;
    run_training(
        o, Logger(LogOptions{.rank = 1}),
        [&](const StepMetrics& m) {
          got.losses.push_back(m.loss);
          got.val_losses.push_back(m.val_loss.value_or(0.0));
        },
        MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
    ASSERT_EQ(got.losses.size(), reference.losses.size()) << l.name();
    for (std::size_t i = 0; i < got.losses.size(); ++i) {
      EXPECT_NEAR(got.losses[i], reference.losses[i], 1e-5 * std::abs(reference.losses[i]))
          << l.name() << " step " << i + 1 << " on rank " << world_rank();
      EXPECT_NEAR(got.val_losses[i], reference.val_losses[i],
                  1e-5 * std::abs(reference.val_losses[i]))
          << l.name() << " validation after step " << i + 1 << " on rank " << world_rank();
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const auto weights = single_rank_weights(dir / (ar + "-" + l.name()));
    ASSERT_EQ(weights.size(), reference_weights.size());
    EXPECT_LT(test::relative_max_difference(weights, reference_weights), 1e-5)
        << l.name() << ": final weights, gathered from the shards";
  }
}

TEST(DiffusionLayoutInvariance, DenseLayoutsMatchOneRank) {
  const fs::path dir = shared_dir();
  // 2 ranks: tp2, pp2, dp2 with ZeRO-1 on the untied model; 4 ranks: tp2 pp2 on the tied one.
  const bool two = world_size() == 2;
  const std::string model = two ? "dense" : "tied";
  train_ar(dir, model + ".json", model);
  std::vector<DiffusionLayout> layouts;
  if (two)
    layouts = {{.tp = 2}, {.pp = 2}, {.dp = 2, .zero1 = true}};
  else if (world_size() == 4)
    layouts = {{.tp = 2, .pp = 2}};
  expect_layouts_match(dir, model, layouts);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

// Saved under tp2 at step 3 of 6, resumed under pp2: steps 4 to 6 follow the single-rank run
// (the [MASK] row comes from the checkpoint, the optimizer state is resharded, the noise of
// every step is the uninterrupted run's).
TEST(DiffusionLayoutInvariance, ResumesUnderAnotherLayout) {
  if (world_size() != 2) GTEST_SKIP() << "tp2 then pp2 on 2 ranks";
  const fs::path dir = shared_dir();
  train_ar(dir, "dense.json", "dense");
  const RunLosses reference = reference_run(diffusion_run(dir, "dense", "reference"));
  RunOptions saving = diffusion_run(dir, "dense", "saved");
  saving.tp = 2;
  saving.save_every = 3;
  test::losses_over_world(saving);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    // What a job preempted right after step 3's save leaves behind.
    fs::remove_all(dir / "saved" / "step_00000006");
    test::write_file(dir / "saved" / "latest", "step_00000003\n");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  RunOptions resumed = diffusion_run(dir, "dense", "resumed");
  resumed.init_path.clear();
  resumed.resume_path = (dir / "saved").string();
  resumed.pp = 2;
  const std::vector<double> losses = test::losses_over_world(resumed);
  ASSERT_EQ(losses.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i)
    EXPECT_NEAR(losses[i], reference.losses[3 + i], 1e-5 * std::abs(reference.losses[3 + i]))
        << "resumed under pp2, step " << 4 + i << " on rank " << world_rank();
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

TEST(DiffusionLayoutInvariance, ExpertParallelMatchesOneRank) {
  if (world_size() != 2) GTEST_SKIP() << "ep2 runs on 2 ranks";
  const fs::path dir = shared_dir();
  train_ar(dir, "moe.json", "moe");
  expect_layouts_match(dir, "moe", {{.dp = 2, .ep = 2}});
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

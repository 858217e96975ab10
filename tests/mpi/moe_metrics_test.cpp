// Under pipeline parallelism every stage measures its own MoE layers; the metrics rank 0 reports
// cover all of them and equal the single-rank run's.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "parallel/mpi_communicator.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;

TEST(MoeMetrics, PipelineStagesReportEveryMoeLayerLikeOneRank) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  long id = rank == 0 ? static_cast<long>(::getpid()) : 0;
  MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  const fs::path dir = fs::temp_directory_path() / ("metamorph-moe-metrics-" + std::to_string(id));
  if (rank == 0) {
    fs::create_directories(dir);
    std::string text;
    for (int d = 0; d < 100; ++d)
      text += "line " + std::to_string(d * 7919 % 1000) + " of the corpus.\n\n";
    test::write_file(dir / "corpus.txt", text);
    data::PrepareOptions p;
    p.input = (dir / "corpus.txt").string();
    p.tokenizer = "byte";
    p.output_prefix = (dir / "data").string();
    data::prepare_dataset(p);
    test::write_file(dir / "model.json", R"({"model_type": "qwen2_moe", "vocab_size": 258,
      "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4,
      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
      "first_k_dense_replace": 1, "router_z_loss_coef": 0.001})");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  RunOptions o;
  o.model_path = (dir / "model.json").string();
  o.data_prefix = (dir / "data").string();
  o.steps = 2;
  o.seq = 16;
  o.micro_batch = 1;
  o.global_batch = 4;
  const Logger quiet(LogOptions{.rank = 1});
  std::vector<std::vector<MoeLayerMetrics>> single, piped;
  run_training(o, quiet, [&](const StepMetrics& m) { single.push_back(m.moe); });
  RunOptions p = o;
  p.pp = size;
  run_training(
      p, quiet, [&](const StepMetrics& m) { piped.push_back(m.moe); },
      MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
  ASSERT_EQ(piped.size(), single.size());
  for (std::size_t step = 0; step < single.size(); ++step) {
    ASSERT_EQ(single[step].size(), 3u);
    ASSERT_EQ(piped[step].size(), 3u) << "rank " << rank << " step " << step + 1;
    for (std::size_t l = 0; l < 3; ++l) {
      const MoeLayerMetrics &a = single[step][l], &b = piped[step][l];
      EXPECT_EQ(a.layer, b.layer);
      EXPECT_EQ(a.tokens_min, b.tokens_min);
      EXPECT_EQ(a.tokens_max, b.tokens_max);
      EXPECT_EQ(a.tokens_per_expert, b.tokens_per_expert);
      EXPECT_NEAR(a.aux_loss, b.aux_loss, 1e-5 * a.aux_loss);
      EXPECT_NEAR(a.z_loss, b.z_loss, 1e-5 * a.z_loss);
      EXPECT_NEAR(a.router_entropy, b.router_entropy, 1e-5 * a.router_entropy);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace metamorph

// Micro-batches in interleaved pairs (train --interleave-pairs): every TP all-reduce of one
// micro-batch runs while the other computes, and the run's losses, gradient norms and validation
// losses equal those of the plain schedule bit for bit (tp2: dense, with recompute, MoE, block
// diffusion; tp2 dp2 with ZeRO-1's overlapped reduce-scatter, an odd micro-batch count). Bad
// combinations are refused up front.
#include <gtest/gtest.h>
#include <mpi.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.hpp"
#include "runtime/core/error.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/mpi_corpus.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_size;

fs::path shared_dir() {
  return test::shared_corpus_dir("metamorph-interleave-pairs-", 260, [](const fs::path& dir) {
    test::write_file(dir / "dense.json", test::kTinyDenseJson);
    test::write_file(dir / "moe.json", test::kTinyMoeJson);
  });
}

struct Curve {
  std::vector<double> losses, grad_norms, val_losses;
};

RunOptions base_options(const fs::path& dir, const std::string& model) {
  RunOptions o;
  o.model_path = (dir / model).string();
  o.data_prefix = (dir / "data").string();
  o.steps = 3;
  o.seq = 16;
  o.micro_batch = 1;
  o.global_batch = 4;
  o.lr = 3e-3;
  o.warmup = 1;
  o.eval_every = 2;
  o.eval_batches = 1;
  o.tp = 2;
  return o;
}

Curve train(RunOptions o) {
  Curve c;
  run_training(
      o, Logger(LogOptions{.rank = 1}),
      [&](const StepMetrics& m) {
        c.losses.push_back(m.loss);
        c.grad_norms.push_back(m.grad_norm);
        if (m.val_loss) c.val_losses.push_back(*m.val_loss);
      },
      MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
  return c;
}

void expect_same_curve(RunOptions o, const std::string& name) {
  o.interleave_pairs = false;
  const Curve plain = train(o);
  o.interleave_pairs = true;
  const Curve paired = train(o);
  ASSERT_EQ(plain.losses.size(), static_cast<std::size_t>(o.steps)) << name;
  EXPECT_EQ(paired.losses, plain.losses) << name;
  EXPECT_EQ(paired.grad_norms, plain.grad_norms) << name;
  EXPECT_EQ(paired.val_losses, plain.val_losses) << name;
  EXPECT_EQ(plain.val_losses.size(), 2u) << name;
}

TEST(InterleavePairs, SameCurveAsThePlainScheduleUnderTp2) {
  if (world_size() != 2) GTEST_SKIP() << "a tp2 run";
  const fs::path dir = shared_dir();
  RunOptions dense = base_options(dir, "dense.json");
  expect_same_curve(dense, "dense");
  dense.recompute = true;
  dense.micro_batch = 2;
  dense.global_batch = 6;  // three micro-batches: a pair, then one alone
  expect_same_curve(dense, "dense, recompute, odd count");
  expect_same_curve(base_options(dir, "moe.json"), "moe");
  RunOptions diffusion = base_options(dir, "dense.json");
  diffusion.objective = "diffusion";
  diffusion.diffusion.block_size = 4;
  diffusion.diffusion.ar_weight = 0.5;
  diffusion.diffusion.mask_token = 259;
  expect_same_curve(diffusion, "block diffusion");
}

TEST(InterleavePairs, SameCurveAsThePlainScheduleUnderTp2Dp2WithZero1) {
  if (world_size() != 4) GTEST_SKIP() << "a tp2 dp2 run";
  const fs::path dir = shared_dir();
  RunOptions o = base_options(dir, "dense.json");
  o.dp = 2;
  o.zero1 = true;
  o.global_batch = 6;  // three micro-batches per replica
  o.grad_bucket_elements = 500;
  expect_same_curve(o, "dense tp2 dp2 zero1");
  o.zero1 = false;
  expect_same_curve(o, "dense tp2 dp2");
}

void expect_refused(RunOptions o, const std::string& fragment) {
  o.interleave_pairs = true;
  try {
    train(o);
    ADD_FAILURE() << "accepted; expected an error naming " << fragment;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(InterleavePairs, RefusesWhatItCannotRun) {
  if (world_size() != 2) GTEST_SKIP() << "two ranks";
  const fs::path dir = shared_dir();
  RunOptions o = base_options(dir, "dense.json");
  o.tp = 1;
  o.dp = 2;
  expect_refused(o, "needs --tp > 1, got --tp 1");
  o = base_options(dir, "dense.json");
  o.tp = 1;
  o.pp = 2;
  expect_refused(o, "needs --tp > 1");
  o = base_options(dir, "dense.json");
  o.global_batch = 1;
  expect_refused(o, "--global-batch 1 gives 1 ");
}

}  // namespace
}  // namespace metamorph

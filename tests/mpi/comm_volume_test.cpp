// The bytes each rank sends in one training step, per group, equal the analytic count exactly
// (fp32, the byte convention of docs/parallelism.md): TP 4 all-reduces of tokens*hidden per
// layer and micro-batch plus the embedding, LM-head and vocabulary-parallel cross-entropy
// reductions; PP one activation forward and one gradient backward per micro-batch and stage
// boundary; DP 2(d-1)/d of the gradient bytes, or with ZeRO-1 a reduce-scatter and an
// all-gather of (d-1)/d of the padded row blocks; plus the few scalars a step agrees on. The
// planner's communication model (planner/cost_model.cpp rank_communication) predicts the same
// numbers.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "models/model_config.hpp"
#include "parallel/mpi_communicator.hpp"
#include "planner/cost_model.hpp"
#include "planner/model_shape.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/train/training_run.hpp"
#include "runtime/train/zero1.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kSeq = 16, kMicro = 1, kGlobal = 8, kFloat = 4;

// Two MoE layers whose tokens go to every expert (top-k = E = 2): the exchanged rows are known
// without looking at the router, so all-to-all bytes are exact.
constexpr const char* kMoeModel = R"({"vocab_size": 260, "hidden_size": 32,
  "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 4, "max_position_embeddings": 64, "model_type": "qwen2_moe",
  "num_experts": 2, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
  "shared_expert_intermediate_size": 16})";

class CommVolume : public ::testing::Test {
 protected:
  void SetUp() override {
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) GTEST_SKIP() << "the volume test runs on 2 ranks";
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    long id = rank == 0 ? static_cast<long>(::getpid()) : 0;
    MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    dir_ = fs::temp_directory_path() / ("metamorph-volume-" + std::to_string(id));
    const std::string model = R"({"vocab_size": 260, "hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
      "max_position_embeddings": 64, "attention_bias": true, "model_type": "qwen3"})";
    config_ = model_config_from_json(nlohmann::json::parse(model));
    if (rank == 0) {
      fs::create_directories(dir_);
      std::string text;
      for (int d = 0; d < 100; ++d) text += "sample text number " + std::to_string(d) + ".\n\n";
      test::write_file(dir_ / "corpus.txt", text);
      data::PrepareOptions p;
      p.input = (dir_ / "corpus.txt").string();
      p.tokenizer = "byte";
      p.vocab_size = 260;
      p.output_prefix = (dir_ / "data").string();
      p.validation_fraction = 0.05;
      data::prepare_dataset(p);
      test::write_file(dir_ / "model.json", model);
      test::write_file(dir_ / "moe.json", kMoeModel);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  void TearDown() override {
    MPI_Barrier(MPI_COMM_WORLD);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0 && !dir_.empty()) fs::remove_all(dir_);
  }

  // Step 1's bytes per group (step 2, the last, also runs validation).
  std::map<std::string, std::uint64_t> first_step(int tp, int pp, int dp, bool zero1, int ep = 1,
                                                  bool moe = false, int etp = 0,
                                                  bool recompute = false) {
    RunOptions o;
    o.recompute = recompute;
    o.etp = etp;
    o.model_path = (dir_ / (ep > 1 || moe ? "moe.json" : "model.json")).string();
    o.ep = ep;
    o.data_prefix = (dir_ / "data").string();
    o.steps = 2;
    o.seq = kSeq;
    o.micro_batch = kMicro;
    o.global_batch = kGlobal;
    o.tp = tp;
    o.pp = pp;
    o.dp = dp;
    o.zero1 = zero1;
    std::map<std::string, std::uint64_t> bytes;
    run_training(
        o, Logger(LogOptions{.rank = 1}),
        [&](const StepMetrics& m) {
          if (m.step == 1) bytes = m.comm_bytes;
        },
        MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
    return bytes;
  }

  // What the planner predicts this rank (stage of world rank 0 or 1) sends per step.
  planner::CommVolume predicted(int tp, int pp, int dp, bool zero1, int ep = 1, bool moe = false,
                                int etp = 0, bool recompute = false) const {
    const planner::ModelShape shape =
        planner::load_model_shape((dir_ / (ep > 1 || moe ? "moe.json" : "model.json")).string());
    planner::Job job;
    job.seq = kSeq;
    job.global_batch = kGlobal;
    planner::set_precision(job, "fp32");
    planner::Layout l;
    l.tp = tp;
    l.pp = pp;
    l.dp = dp;
    l.micro_batch = static_cast<int>(kMicro);
    l.num_micro_batches = kGlobal / (kMicro * dp);
    l.zero1 = zero1;
    l.ep = ep;
    l.etp = etp > 0 ? etp : tp;  // the runtime's expert-TP follows TP unless given
    l.recompute = recompute ? planner::Recompute::full : planner::Recompute::none;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return planner::rank_communication(shape, job, l, pp > 1 ? rank : 0);
  }

  // The planner's bytes per group equal the measured ones, for every group either side names.
  void expect_planner_matches(const std::map<std::string, std::uint64_t>& measured,
                              const planner::CommVolume& model) const {
    // The planner's short names for the expert groups.
    const std::map<std::string, std::string> runtime_name = {{"etp", "expert_tp"},
                                                             {"edp", "expert_dp"}};
    std::map<std::string, double> predicted;
    for (const auto& e : model.entries)
      predicted[runtime_name.count(e.group) ? runtime_name.at(e.group) : e.group] +=
          e.bytes_per_rank;
    for (const auto& [group, bytes] : measured) {
      if (bytes > 0) {
        EXPECT_EQ(predicted[group], static_cast<double>(bytes)) << group;
      }
    }
    for (const auto& [group, bytes] : predicted)
      EXPECT_EQ(measured.count(group) ? static_cast<double>(measured.at(group)) : 0.0, bytes)
          << group;
  }

  fs::path dir_;
  ModelConfig config_;
};

TEST_F(CommVolume, TensorParallelTwo) {
  const auto bytes = first_step(2, 1, 1, false);
  const std::int64_t tokens = kMicro * kSeq, h = config_.hidden_size,
                     micro_batches = kGlobal / kMicro;
  // Per micro-batch, each all-reduce of n bytes counting 2(t-1)/t * n = n for t = 2: the
  // embedding output, 2 forward and 2 backward per layer, the LM head's input gradient, and the
  // cross-entropy's row max, exp-sum and target logit. Per step: the QK-norm weight gradients.
  const std::int64_t per_micro = ((2 + 4 * config_.num_layers) * tokens * h + 3 * tokens) * kFloat;
  const std::int64_t qk_norm = config_.num_layers * 2 * config_.head_dim * kFloat;
  EXPECT_EQ(bytes.at("tp"), static_cast<std::uint64_t>(micro_batches * per_micro + qk_norm));
  EXPECT_EQ(bytes.at("model_parallel"), 4u);  // the squared gradient norm
  EXPECT_EQ(bytes.at("world"), 4u);           // the stop-signal agreement
  EXPECT_EQ(bytes.count("dp") + bytes.count("pp"), 0u);
  expect_planner_matches(bytes, predicted(2, 1, 1, false));
}

// Full recompute runs each layer's forward again before its backward: its two forward
// all-reduces happen twice (6 per layer and micro-batch instead of 4).
TEST_F(CommVolume, TensorParallelTwoWithRecompute) {
  const auto bytes = first_step(2, 1, 1, false, 1, false, 0, true);
  const std::int64_t tokens = kMicro * kSeq, h = config_.hidden_size,
                     micro_batches = kGlobal / kMicro;
  const std::int64_t per_micro = ((2 + 6 * config_.num_layers) * tokens * h + 3 * tokens) * kFloat;
  const std::int64_t qk_norm = config_.num_layers * 2 * config_.head_dim * kFloat;
  EXPECT_EQ(bytes.at("tp"), static_cast<std::uint64_t>(micro_batches * per_micro + qk_norm));
  expect_planner_matches(bytes, predicted(2, 1, 1, false, 1, false, 0, true));
}

// The same for expert parallelism: dispatch, combine and the counts' exchange run again.
TEST_F(CommVolume, ExpertParallelTwoWithRecompute) {
  const auto bytes = first_step(1, 1, 2, false, 2, true, 0, true);
  expect_planner_matches(bytes, predicted(1, 1, 2, false, 2, true, 0, true));
}

TEST_F(CommVolume, PipelineParallelTwo) {
  const auto bytes = first_step(1, 2, 1, false);
  const std::int64_t tokens = kMicro * kSeq, h = config_.hidden_size,
                     micro_batches = kGlobal / kMicro;
  // Stage 0 sends each micro-batch's activations, stage 1 each input gradient: one boundary.
  const std::int64_t activations = micro_batches * tokens * h * kFloat;
  EXPECT_EQ(bytes.at("pp"), static_cast<std::uint64_t>(activations + 4));  // + the loss sum
  EXPECT_EQ(bytes.at("model_parallel"), 4u);
  EXPECT_EQ(bytes.count("tp") + bytes.count("dp") + bytes.count("embedding"), 0u);  // untied
  expect_planner_matches(bytes, predicted(1, 2, 1, false));
}

TEST_F(CommVolume, DataParallelTwo) {
  const auto bytes = first_step(1, 1, 2, false);
  // 2(d-1)/d of the gradient bytes = all of them for d = 2, plus the token count and loss sum.
  EXPECT_EQ(bytes.at("dp"), static_cast<std::uint64_t>(parameter_count(config_) * kFloat + 8));
  EXPECT_EQ(bytes.count("tp") + bytes.count("pp") + bytes.count("model_parallel"), 0u);
  expect_planner_matches(bytes, predicted(1, 1, 2, false));
}

TEST_F(CommVolume, DataParallelTwoWithZero1) {
  const auto bytes = first_step(1, 1, 2, true);
  // Replica segments are padded to the larger one; reduce-scatter and all-gather each send
  // (d-1)/d of the d segments.
  std::int64_t segment[2] = {0, 0};
  for (const auto& spec : parameter_specs(config_)) {
    const std::int64_t rows = spec.shape[0], width = shape_numel(spec.shape) / rows;
    for (int r = 0; r < 2; ++r) {
      const auto [b, e] = Zero1::owned_rows(rows, r, 2);
      segment[r] += (e - b) * width;
    }
  }
  const std::int64_t padded = std::max(segment[0], segment[1]);
  // + token count, loss sum and the gradient norm's sum over the replicas' rows.
  EXPECT_EQ(bytes.at("dp"), static_cast<std::uint64_t>(2 * padded * kFloat + 12));
  // The planner counts the unpadded blocks: exact up to the padding of the smaller segment.
  double planned = 0;
  for (const auto& e : predicted(1, 1, 2, true).entries)
    if (e.group == "dp") planned += e.bytes_per_rank;
  const double padding = static_cast<double>(2 * padded - segment[0] - segment[1]) * kFloat;
  EXPECT_EQ(planned + padding, static_cast<double>(bytes.at("dp")));
}

TEST_F(CommVolume, ExpertParallelTwo) {
  const auto bytes = first_step(1, 1, 2, false, 2);
  const ModelConfig moe = model_config_from_json(nlohmann::json::parse(kMoeModel));
  const std::int64_t tokens = kMicro * kSeq, h = moe.hidden_size, k = moe.moe.top_k,
                     micro_batches = kGlobal / (kMicro * 2), moe_layers = moe.num_layers;
  // Per MoE layer and micro-batch: dispatch and combine forward, their mirror images backward,
  // each of tokens * k rows of h floats, of which the other rank's expert's half leaves.
  const std::int64_t exchanges = 4 * moe_layers * micro_batches;
  const std::int64_t rows_out = tokens * k / 2;
  // Plus, per forward, the counts (E int64, half of them to the peer) and the experts' part of
  // the squared gradient norm (one fp32 all-reduce a step).
  const std::int64_t counts = moe_layers * micro_batches * moe.moe.num_experts * 8 / 2;
  EXPECT_EQ(bytes.at("ep"),
            static_cast<std::uint64_t>(exchanges * rows_out * h * kFloat + counts + 4));
  // Dense gradients over DP; each expert has one holder (expert-DP 1): no expert traffic.
  std::int64_t dense = 0;
  for (const auto& spec : parameter_specs(moe))
    if (spec.name.find(".mlp.experts.") == std::string::npos) dense += shape_numel(spec.shape);
  // + token count and loss sum, and per MoE layer the summed expert loads (E + 2 int64).
  const std::int64_t loads = moe_layers * (moe.moe.num_experts + 2) * 8;
  EXPECT_EQ(bytes.at("dp"), static_cast<std::uint64_t>(dense * kFloat + 8 + loads));
  EXPECT_EQ(bytes.count("expert_dp") + bytes.count("tp"), 0u);
  expect_planner_matches(bytes, predicted(1, 1, 2, false, 2));
}

// Tensor parallelism on an MoE model: each TP rank dispatches the (identical) tokens to its own
// expert shards, whose partial outputs the layer's TP all-reduces sum; the routers' and
// shared-expert gates' gradients are summed once a step.
TEST_F(CommVolume, TensorParallelTwoMoe) {
  const auto bytes = first_step(2, 1, 1, false, 1, true);
  const ModelConfig moe = model_config_from_json(nlohmann::json::parse(kMoeModel));
  const std::int64_t tokens = kMicro * kSeq, h = moe.hidden_size, micro_batches = kGlobal / kMicro;
  const std::int64_t per_micro = ((2 + 4 * moe.num_layers) * tokens * h + 3 * tokens) * kFloat;
  const std::int64_t routers = moe.num_layers * (moe.moe.num_experts + 1) * h * kFloat;
  EXPECT_EQ(bytes.at("tp"), static_cast<std::uint64_t>(micro_batches * per_micro + routers));
  EXPECT_EQ(bytes.count("ep") + bytes.count("dp"), 0u);
  expect_planner_matches(bytes, predicted(2, 1, 1, false, 1, true));
}

// Expert-TP across the two replicas (no EP): each member's routed rows go to the other member
// and the other member's partial outputs come back, forward and backward; the per-expert counts
// are all-gathered once per forward.
TEST_F(CommVolume, ExpertTensorParallelAcrossReplicas) {
  const auto bytes = first_step(1, 1, 2, false, 1, true, 2);
  const ModelConfig moe = model_config_from_json(nlohmann::json::parse(kMoeModel));
  const std::int64_t tokens = kMicro * kSeq, h = moe.hidden_size, k = moe.moe.top_k,
                     micro_batches = kGlobal / (kMicro * 2), layers = moe.num_layers,
                     experts = moe.moe.num_experts;
  const std::int64_t rows = 4 * layers * micro_batches * tokens * k * h * kFloat;
  const std::int64_t counts = layers * micro_batches * experts * 8;  // half of 2 x E int64
  EXPECT_EQ(bytes.at("expert_tp"), static_cast<std::uint64_t>(rows + counts + 4));
  EXPECT_EQ(bytes.count("ep") + bytes.count("expert_dp") + bytes.count("tp"), 0u);
  expect_planner_matches(bytes, predicted(1, 1, 2, false, 1, true, 2));
}

}  // namespace
}  // namespace metamorph

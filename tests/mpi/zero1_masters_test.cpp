// ZeRO-1 with bf16 weights and separate fp32 masters, the layout of a GPU run, on two CPU ranks:
// the CPU backend with bf16 weights (MixedPrecisionCpu converts in its copies, as the CUDA
// backend does) stands in for the GPUs, so the sharded masters, the bf16 all-gather, the memory
// they save and their checkpoints are tested where CI runs. Against one rank holding whole masters:
//   - three AdamW steps give bit-identical bf16 weights, fp32 master rows and moments;
//   - the arena holds what the planner's ZeRO-1 model state predicts (bf16 weights, fp32 grads,
//     fp32 master and moments divided by DP), and the optimizer phase's peak its segments;
//   - a checkpoint of the two replicas' rows loads on one rank (bf16 weights with masters, and the
//     plain fp32 CPU layout) and back under ZeRO-1; one rank's checkpoint loads under ZeRO-1.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "models/init.hpp"
#include "models/parameter_transfer.hpp"
#include "parallel/mpi_communicator.hpp"
#include "planner/cost_model.hpp"
#include "planner/model_shape.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/stored_dtype.hpp"
#include "runtime/train/optimizer.hpp"
#include "runtime/train/replica_sync.hpp"
#include "runtime/train/zero1.hpp"
#include "tests/support/mpi_corpus.hpp"

namespace metamorph {
namespace {

namespace fs = std::filesystem;
using test::world_rank;
using test::world_size;

// The CPU backend with bf16 weights: copies and host transfers convert between f32 and bf16
// (rounding to nearest even, as the CUDA backend's conversions do).
class MixedPrecisionCpu : public CpuBackend {
 public:
  using CpuBackend::CpuBackend;
  DType activation_dtype() const override { return DType::bf16; }
  void copy(const Tensor& src, Tensor& dst) override {
    if (src.dtype() == dst.dtype()) return CpuBackend::copy(src, dst);
    ASSERT_EQ(src.numel(), dst.numel());
    checkpoint::convert_elements(checkpoint::stored_dtype_of(src.dtype()), src.raw(),
                                 checkpoint::stored_dtype_of(dst.dtype()), dst.raw(),
                                 static_cast<std::size_t>(src.numel()));
  }
  Tensor to_host(const Tensor& x, DType dtype) override { return converted(x, dtype); }
  Tensor from_host(const Tensor& host, DType dtype) override { return converted(host, dtype); }

 private:
  Tensor converted(const Tensor& x, DType dtype) {
    if (x.dtype() == dtype) return x;
    Tensor out = empty(x.shape(), dtype);
    copy(x, out);
    return out;
  }
};

// Sigmoid routing: its balancing bias is state a rule updates, kept whole on every replica.
const char* kMoeConfig = R"({"model_type": "deepseek_v3", "vocab_size": 96, "hidden_size": 32,
  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "max_position_embeddings": 64, "n_routed_experts": 4,
  "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_shared_experts": 1,
  "scoring_func": "sigmoid", "first_k_dense_replace": 1,
  "metamorph": {"bias_update_rate": 0.01}})";
// Dense and large enough that the arena's 64-byte rounding is noise against the model state.
const char* kDenseConfig = R"({"vocab_size": 384, "hidden_size": 64, "intermediate_size": 176,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
  "max_position_embeddings": 64})";

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

// The gradient replica `rank` computes at `step` (small values, distinct per element).
float grad_value(std::int64_t i, int step, int rank, std::size_t param) {
  const auto k =
      static_cast<std::int64_t>(i * 7 + step * 13 + rank * 29 + static_cast<int>(param) * 3);
  return static_cast<float>(k % 17 - 8) * 0.01f;
}

AdamWOptions options() {
  AdamWOptions o;
  o.clip_norm = 0;  // the norm's sums differ in order between the layouts; clipping would too
  return o;
}

class Zero1Masters : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(world_size(), 2) << "run with mpirun -np 2";
    dp_ = MpiCommunicator::duplicate(MPI_COMM_WORLD, "dp", MpiOptions{});
    long id = world_rank() == 0 ? static_cast<long>(::getpid()) : 0;
    MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    dir_ = fs::temp_directory_path() / ("metamorph-zero1-masters-" + std::to_string(id));
  }
  void TearDown() override {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(dir_);
  }

  // Three steps: under ZeRO-1 each replica's own gradient, reduce-scattered; on one rank the
  // replicas' sum.
  void train(ParameterSet& params, AdamW& optimizer, Zero1* zero) {
    for (int step = 1; step <= 3; ++step) {
      std::size_t index = 0;
      for (auto& p : params.all()) {
        float* g = p.grad.data<float>();
        for (std::int64_t i = 0; i < p.grad.numel(); ++i)
          g[i] = zero ? grad_value(i, step, world_rank(), index)
                      : grad_value(i, step, 0, index) + grad_value(i, step, 1, index);
        ++index;
      }
      if (zero) zero->reduce_scatter_gradients();
      optimizer.step(1e-2, optimizer.grad_norm());
      if (zero) zero->all_gather_parameters();
    }
  }

  AdamW::ReduceSum sum_over_dp(Arena& arena) {
    return [this, &arena](double x) { return sum_scalar(*dp_, x, arena); };
  }

  RankContext zero1_context(Arena& arena) {
    RankContext c;
    c.rank = world_rank();
    c.world = 2;
    c.all_ok = [this, &arena](bool ok) { return sum_scalar(*dp_, ok ? 0.0 : 1.0, arena) == 0.0; };
    c.model_replica = c.optim_replica = 0;  // as training_run sets them for ZeRO-1 on a GPU
    return c;
  }

  // The whole-master run's state against a ZeRO-1 replica's: bf16 weights, master rows, moments.
  static void expect_replica_of(const ParameterSet& whole, const ParameterSet& zero) {
    for (const auto& p : zero.all()) {
      const Parameter& w = *whole.find(p.name);
      EXPECT_TRUE(same_bits(p.value, w.value)) << p.name << " weights";
      if (!p.master_holds_rows_only()) {
        EXPECT_TRUE(same_bits(p.master, w.master)) << p.name << " whole master";
        continue;
      }
      const std::int64_t begin = p.optim_offset[0] - p.offset[0];
      const std::int64_t end = begin + p.master.dim(0);
      EXPECT_TRUE(same_bits(p.master, w.master.slice(begin, end))) << p.name << " master rows";
      EXPECT_TRUE(same_bits(p.adam_m, w.adam_m.slice(begin, end))) << p.name << " m rows";
      EXPECT_TRUE(same_bits(p.adam_v, w.adam_v.slice(begin, end))) << p.name << " v rows";
    }
  }

  std::unique_ptr<MpiCommunicator> dp_;
  fs::path dir_;
};

TEST_F(Zero1Masters, StepsEqualTheWholeMasterRun) {
  const ModelConfig config = model_config_from_json(nlohmann::json::parse(kMoeConfig));
  Arena arena;
  MixedPrecisionCpu backend(arena);
  ParameterSet whole = make_parameters(backend, config), sharded = make_parameters(backend, config);
  init_parameters(backend, whole, config, 11);
  init_parameters(backend, sharded, config, 11);
  Zero1 zero(backend, sharded, *dp_);
  AdamW whole_optimizer(backend, whole, options());
  AdamW sharded_optimizer(backend, sharded, options(), sum_over_dp(arena));
  bool kept_whole = false;
  for (const auto& p : sharded.all()) {
    ASSERT_TRUE(p.master.defined()) << p.name;
    if (!p.trainable) {
      // The balancing rule reads and writes the whole master on every replica.
      EXPECT_FALSE(p.master_holds_rows_only()) << p.name;
      EXPECT_EQ(p.master.shape(), p.value.shape()) << p.name;
      kept_whole = true;
      continue;
    }
    ASSERT_TRUE(p.master_holds_rows_only()) << p.name;
    const auto [begin, end] = Zero1::owned_rows(p.value.dim(0), world_rank(), 2);
    EXPECT_EQ(p.master.dim(0), end - begin) << p.name;
    EXPECT_EQ(p.adam_m.shape(), p.master.shape()) << p.name;
  }
  EXPECT_TRUE(kept_whole) << "the model should have a balancing bias";
  train(whole, whole_optimizer, nullptr);
  train(sharded, sharded_optimizer, &zero);
  expect_replica_of(whole, sharded);
}

// The planner's ZeRO-1 model state (bf16 precision: 2-byte weights, 4-byte grads, 12 bytes of
// master and moments divided by DP) against what the arena holds, and the optimizer phase's
// segments (grad_bytes x parameters x (1 + 1/DP)) against the step's peak above that.
TEST_F(Zero1Masters, ArenaHoldsWhatThePlannerPredicts) {
  const nlohmann::json json = nlohmann::json::parse(kDenseConfig);
  const ModelConfig config = model_config_from_json(json);
  Arena arena, scalars;
  MixedPrecisionCpu backend(arena);
  ParameterSet params = make_parameters(backend, config);
  init_parameters(backend, params, config, 3);
  Zero1 zero(backend, params, *dp_);
  AdamW optimizer(backend, params, options(), sum_over_dp(scalars));

  planner::Job job;
  job.seq = 32;
  job.global_batch = 2;
  planner::set_precision(job, "bf16");
  planner::Layout layout;
  layout.dp = 2;
  layout.zero1 = true;
  const planner::ModelShape shape = planner::model_shape_from_json(json);
  const planner::MemoryBreakdown state = planner::model_state_memory(shape, job, layout, 0);
  const double predicted = state.weights + state.grads + state.optimizer;
  const auto held = static_cast<double>(arena.bytes_in_use());
  EXPECT_NEAR(predicted / held, 1.0, 0.01) << "predicted " << predicted << ", held " << held;
  // Against whole masters and moments, the replica holds half of 12 bytes per parameter less.
  const double parameters = state.weights / 2;
  EXPECT_LT(held, 2 * parameters + 4 * parameters + 12 * parameters * 0.51);

  arena.reset_peak();
  train(params, optimizer, &zero);
  const double phase = static_cast<double>(arena.peak_bytes()) - held;
  const double predicted_phase = job.grad_bytes * parameters * (1.0 + 1.0 / layout.dp);
  EXPECT_NEAR(predicted_phase / phase, 1.0, 0.01)
      << "predicted " << predicted_phase << ", measured " << phase;
  if (std::getenv("METAMORPH_MEMORY_REPORT") != nullptr)
    std::printf(
        "rank %d: %.0f parameters; model state held %.0f B, planner %.0f B (%+.2f%%); optimizer "
        "phase %.0f B, planner %.0f B (%+.2f%%)\n",
        world_rank(), parameters, held, predicted, 100 * (predicted / held - 1), phase,
        predicted_phase, 100 * (predicted_phase / phase - 1));
}

TEST_F(Zero1Masters, CheckpointsMoveBetweenZero1AndOneRank) {
  const ModelConfig config = model_config_from_json(nlohmann::json::parse(kMoeConfig));
  Arena arena;
  MixedPrecisionCpu backend(arena);
  CpuBackend cpu(arena);
  ParameterSet whole = make_parameters(backend, config), sharded = make_parameters(backend, config);
  init_parameters(backend, whole, config, 5);
  init_parameters(backend, sharded, config, 5);
  Zero1 zero(backend, sharded, *dp_);
  AdamW whole_optimizer(backend, whole, options());
  AdamW sharded_optimizer(backend, sharded, options(), sum_over_dp(arena));
  train(whole, whole_optimizer, nullptr);
  train(sharded, sharded_optimizer, &zero);

  CheckpointState state;
  state.step = 3;
  state.config = model_config_to_json(config);
  // Each replica writes its rows, as training_run does for ZeRO-1 on a GPU.
  const ParameterSet rows =
      Zero1::rows_to_write(host_parameters(backend, sharded, true), world_rank());
  const fs::path saved = save_checkpoint(dir_ / "zero1", rows, state, zero1_context(arena));
  EXPECT_TRUE(verify_checkpoint(saved).empty());

  // On one rank with bf16 weights and whole masters (a single GPU).
  ParameterSet one = make_parameters(backend, config);
  {
    ParameterSet host = host_parameters(backend, one, true);
    for (auto& p : host.all()) {
      p.adam_m = cpu.zeros(p.value.shape());
      p.adam_v = cpu.zeros(p.value.shape());
    }
    for (auto& p : one.all()) {
      p.adam_m = backend.zeros(p.value.shape());
      p.adam_v = backend.zeros(p.value.shape());
    }
    load_checkpoint(saved, host);
    upload_parameters(backend, host, one, true);
  }
  for (const auto& p : whole.all()) {
    const Parameter& q = *one.find(p.name);
    EXPECT_TRUE(same_bits(p.master, q.master)) << p.name << " master on one rank";
    EXPECT_TRUE(same_bits(p.value, q.value)) << p.name << " weights on one rank";
    EXPECT_TRUE(same_bits(p.adam_m, q.adam_m)) << p.name << " m on one rank";
    EXPECT_TRUE(same_bits(p.adam_v, q.adam_v)) << p.name << " v on one rank";
  }

  // On one CPU rank (fp32 weights are their own masters).
  ParameterSet fp32 = make_parameters(cpu, config);
  AdamW fp32_optimizer(cpu, fp32, options());
  load_checkpoint(saved, fp32);
  for (const auto& p : whole.all()) {
    const Parameter& q = *fp32.find(p.name);
    EXPECT_TRUE(same_bits(p.master, q.value)) << p.name << " fp32 weights";
    EXPECT_TRUE(same_bits(p.adam_m, q.adam_m)) << p.name << " fp32 m";
  }

  // Back under ZeRO-1: each replica reads its rows and all-gathers the weights.
  auto load_sharded = [&](const fs::path& from) {
    ParameterSet again = make_parameters(backend, config);
    Zero1 again_zero(backend, again, *dp_);
    ParameterSet host = host_parameters(backend, again, true);
    load_checkpoint(from, host);
    upload_parameters(backend, host, again, true);
    again_zero.all_gather_parameters();
    return again;
  };
  expect_replica_of(whole, load_sharded(saved));

  // One rank's checkpoint (whole masters) under ZeRO-1.
  if (world_rank() == 0) {
    ParameterSet host = host_parameters(backend, whole, true);
    save_checkpoint(dir_ / "one", host, state);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  expect_replica_of(whole, load_sharded(dir_ / "one"));
}

}  // namespace
}  // namespace metamorph

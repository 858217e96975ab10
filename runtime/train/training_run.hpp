#pragma once
// A whole `metamorph train` run on one rank: model from a config, a checkpoint (--init) or a
// run to resume; data from an indexed dataset; periodic validation, metrics, checkpoints,
// preemption signals.
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "parallel/communicator.hpp"
#include "runtime/diffusion/diffusion_batch.hpp"
#include "runtime/log/log.hpp"
#include "runtime/train/trainer.hpp"

namespace metamorph {

struct RunOptions {
  std::string model_path;       // a model config (fresh init), or
  nlohmann::json model_config;  // the same inline (a plan's model), or
  std::string init_path;        // a checkpoint whose weights start a new run (step 0), or
  std::string resume_path;      // a checkpoint directory to continue bit-exactly
  std::string data_prefix;
  std::int64_t steps = 0;  // total optimizer steps of the run (a resumed run continues to it)
  std::int64_t seq = 0;
  std::int64_t micro_batch = 1;
  std::int64_t global_batch = 1;
  double lr = 3e-4;
  double min_lr = -1;  // < 0: lr / 10
  std::int64_t warmup = 0;
  AdamWOptions adamw;
  std::int64_t eval_every = 0;
  std::int64_t eval_batches = 4;
  std::string save_dir;
  std::int64_t save_every = 0;  // 0: only at the end
  int keep_last = 0;
  std::string metrics_path;
  std::uint64_t seed = 1234;
  bool recompute = false;
  // Benchmark only: MoE layers route every token to a fixed balanced set of experts instead of
  // the router's top-k (docs/moe.md, "Balanced routing for benchmarks"). Refused for dense models.
  bool moe_force_balance = false;
  NonFinitePolicy on_nonfinite = NonFinitePolicy::stop;
  std::string sample_mode = "pack";
  // "ar" or "diffusion" (block diffusion, docs/diffusion.md). diffusion.mask_token < 0: take it
  // from the checkpoint, or add [MASK] by growing the embedding.
  std::string objective = "ar";
  diffusion::DiffusionOptions diffusion;
  int tp = 1;          // tensor-parallel size
  int pp = 1;          // pipeline-parallel size (1F1B)
  int dp = 1;          // data-parallel size
  int ep = 1;          // expert-parallel size (inside dp: EP ranks are data-parallel replicas)
  int etp = 0;         // expert tensor-parallel size; 0: the same as tp
  bool zero1 = false;  // shard AdamW state over the data-parallel replicas
  // Data-parallel gradient bucket (fp32 elements): the all-reduce's, or ZeRO-1's reduce-scatter's.
  std::int64_t grad_bucket_elements = 1 << 20;
  // Reduce the buckets while the last micro-batch's backward runs (plain DP and ZeRO-1); false:
  // after the backward (ZeRO-1: one reduce-scatter of every gradient).
  bool overlap_grad_reduce = true;
  // Micro-batches two at a time, interleaved layer by layer, so that each one's TP all-reduces
  // run while the other computes (Transformer::forward_backward_interleaved); needs tp > 1 and
  // one pipeline stage. The same losses and gradients; both micro-batches' activations at once.
  bool interleave_pairs = false;
  // Where the model computes: the CPU reference (f32) or one CUDA GPU (bf16 weights and
  // activations, fp32 masters, grads and AdamW state); cuda runs one rank for now.
  Device device = Device::cpu;
  // Reductions in a fixed order (runs repeat bit for bit; resumption continues a curve exactly).
  // false: float atomics where faster (the attention backward's dQ on GPUs).
  bool deterministic = true;
  // GPUs: streams the experts' weight-gradient GEMMs spread over (CudaBackend::set_expert_streams);
  // 1 runs the experts one after another. Results are the same bits either way.
  int expert_streams = 4;
  // Megatron-style timers (StepTimers): seconds per region in every step's metrics and a summary
  // at the end of the run (steps after the first). Off by default: a GPU run records two CUDA
  // events per region.
  bool timers = false;
};

struct RunSummary {
  std::int64_t steps = 0;
  double last_loss = 0.0;
  std::optional<double> last_val_loss;
  std::string saved;  // the last committed checkpoint step directory, if any
  bool stopped_by_signal = false;
  double save_blocked_s = 0.0;  // seconds the steps waited for checkpoints (download, commit)
};

// Validates the options (InputError naming the option), then trains. `world` spans every rank
// of the run (tp * pp * dp of them); null means a single process.
RunSummary run_training(const RunOptions& options, const Logger& log,
                        const std::function<void(const StepMetrics&)>& on_step = {},
                        std::unique_ptr<Communicator> world = nullptr);

}  // namespace metamorph

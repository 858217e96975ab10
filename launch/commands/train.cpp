// `metamorph train`: the options of DESIGN.md section 9 mapped onto RunOptions.
#include <cstdlib>
#include <iostream>
#include <optional>

#include "launch/cli/command.hpp"
#include "launch/commands/train_plan.hpp"
#include "parallel/mpi_communicator.hpp"
#include "parallel/mpi_session.hpp"
#include "runtime/core/error.hpp"
#include "runtime/log/log.hpp"
#include "runtime/train/compute_device.hpp"
#include "runtime/train/training_run.hpp"

namespace metamorph::cli {

namespace {

po::options_description train_options() {
  po::options_description o;
  // clang-format off
  o.add_options()
    ("plan", po::value<std::string>(), "plan.json from `metamorph plan`: run its layout, batch and (without --model/--init/--resume) its model")
    ("model", po::value<std::string>(), "model config (HF config.json fields): train from scratch")
    ("init", po::value<std::string>(), "checkpoint whose weights start a new run at step 0")
    ("resume", po::value<std::string>(), "checkpoint directory to continue (its latest step)")
    ("data", po::value<std::string>(), "dataset prefix written by `metamorph data prepare`")
    ("steps", po::value<std::int64_t>()->default_value(100), "total optimizer steps of the run")
    ("seq", po::value<std::int64_t>()->default_value(256), "sequence length")
    ("micro-batch", po::value<std::int64_t>()->default_value(4), "sequences per forward/backward")
    ("global-batch", po::value<std::int64_t>()->default_value(8), "sequences per optimizer step")
    ("lr", po::value<double>()->default_value(3e-4), "peak learning rate")
    ("min-lr", po::value<double>()->default_value(-1), "final learning rate of the cosine decay (default lr/10)")
    ("warmup", po::value<std::int64_t>()->default_value(0), "linear warm-up steps")
    ("weight-decay", po::value<double>()->default_value(0.1), "AdamW decoupled weight decay (not on norms, biases)")
    ("beta1", po::value<double>()->default_value(0.9), "AdamW beta1")
    ("beta2", po::value<double>()->default_value(0.95), "AdamW beta2")
    ("adam-eps", po::value<double>()->default_value(1e-8), "AdamW epsilon")
    ("clip-grad", po::value<double>()->default_value(1.0), "clip the global gradient norm to this (0: off)")
    ("eval-every", po::value<std::int64_t>()->default_value(0), "validation loss every N steps (0: at the end)")
    ("eval-batches", po::value<std::int64_t>()->default_value(4), "micro-batches per validation")
    ("save", po::value<std::string>(), "checkpoint directory (alias --out)")
    ("out", po::value<std::string>(), "same as --save")
    ("save-every", po::value<std::int64_t>()->default_value(0), "checkpoint every N steps (0: at the end)")
    ("keep-last", po::value<int>()->default_value(0), "keep only the newest K checkpoints (0: all)")
    ("metrics", po::value<std::string>(), "JSON-lines file, one object per step")
    ("seed", po::value<std::uint64_t>()->default_value(1234), "seed of init and data order")
    ("recompute", po::bool_switch(), "full activation recompute per layer")
    ("moe-force-balance", po::bool_switch(), "benchmark only: MoE tokens go to a fixed balanced set of experts instead of the router's top-k (router, gates, aux/z losses still computed); losses say nothing about quality")
    ("on-nonfinite", po::value<std::string>()->default_value("stop"), "non-finite loss or gradient: stop | skip")
    ("sample-mode", po::value<std::string>()->default_value("pack"), "pack (across documents) | pad | drop")
    ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda (one GPU per rank: bf16 weights and activations, fp32 masters, grads and AdamW state; NCCL between GPUs)")
    ("tp", po::value<int>()->default_value(1), "tensor-parallel size")
    ("pp", po::value<int>()->default_value(1), "pipeline-parallel size")
    ("dp", po::value<int>()->default_value(1), "data-parallel size")
    ("ep", po::value<int>()->default_value(1), "expert-parallel size (divides --dp and the number of experts, or equals --tp with --etp 1)")
    ("etp", po::value<int>()->default_value(0), "expert tensor-parallel size (0: the same as --tp; 1 with --ep equal to --tp: whole experts over the TP group)")
    ("zero1", po::bool_switch(), "shard AdamW state over data-parallel replicas (ZeRO-1)")
    ("no-overlap-grad-reduce", po::bool_switch(), "reduce data-parallel gradients after the backward instead of while the last micro-batch's backward runs (ZeRO-1: one reduce-scatter of every gradient)")
    ("interleave-pairs", po::bool_switch(), "run micro-batches two at a time, interleaved layer by layer, so that each one's tensor-parallel all-reduces run while the other computes (needs --tp > 1, --pp 1 and two micro-batches per replica; same losses, both micro-batches' activations held at once)")
    ("nondeterministic", po::bool_switch(), "GPUs: float atomics where faster (attention backward); runs then differ in the last bits and a resumed run does not continue its curve bit for bit")
    ("expert-streams", po::value<int>()->default_value(4), "GPUs: CUDA streams the local experts' weight-gradient GEMMs run on at the same time (1: one expert after another; more holds that many - 1 extra 32 MiB cuBLASLt workspaces); the same bits either way")
    ("timers", po::bool_switch(), "time each step's regions (attention, MLP/MoE phases, TP all-reduces, gradient reduce, optimizer) on the device: seconds per region in the metrics, the mean per step logged at the end")
    ("objective", po::value<std::string>()->default_value("ar"), "training objective: ar | diffusion (block diffusion, docs/diffusion.md)")
    ("block-size", po::value<std::int64_t>()->default_value(4), "diffusion: tokens per block B (1..64)")
    ("mask-schedule", po::value<std::string>()->default_value("uniform"), "diffusion: uniform | position-dependent")
    ("mask-beta", po::value<double>()->default_value(2.0), "diffusion: slope beta of the position-dependent schedule")
    ("noise-sampling", po::value<std::string>()->default_value("independent"), "diffusion: independent | stratified noise levels")
    ("noise-per-sequence", po::bool_switch(), "diffusion: one noise level per sequence instead of per block")
    ("logit-shift", po::bool_switch(), "diffusion: output i predicts token i+1, as the AR head (default)")
    ("no-logit-shift", po::bool_switch(), "diffusion: output i predicts token i")
    ("ar-weight", po::value<double>()->default_value(0.0), "diffusion: weight of an added causal next-token loss");
  // clang-format on
  return o;
}

std::string optional_string(const po::variables_map& vm, const char* name) {
  return vm.count(name) ? vm[name].as<std::string>() : std::string();
}

int run_train(const po::variables_map& vm) {
  for (const char* dim : {"tp", "pp", "dp", "ep"})
    require(vm[dim].as<int>() >= 1, "train: --", dim, " must be >= 1, got ", vm[dim].as<int>());
  require(!(vm.count("save") && vm.count("out")), "train: give --save or --out, not both");
  RunOptions o;
  o.model_path = optional_string(vm, "model");
  o.init_path = optional_string(vm, "init");
  o.resume_path = optional_string(vm, "resume");
  o.data_prefix = optional_string(vm, "data");
  o.steps = vm["steps"].as<std::int64_t>();
  o.seq = vm["seq"].as<std::int64_t>();
  o.micro_batch = vm["micro-batch"].as<std::int64_t>();
  o.global_batch = vm["global-batch"].as<std::int64_t>();
  o.lr = vm["lr"].as<double>();
  o.min_lr = vm["min-lr"].as<double>();
  o.warmup = vm["warmup"].as<std::int64_t>();
  o.adamw.weight_decay = vm["weight-decay"].as<double>();
  o.adamw.beta1 = vm["beta1"].as<double>();
  o.adamw.beta2 = vm["beta2"].as<double>();
  o.adamw.eps = vm["adam-eps"].as<double>();
  o.adamw.clip_norm = vm["clip-grad"].as<double>();
  o.eval_every = vm["eval-every"].as<std::int64_t>();
  o.eval_batches = vm["eval-batches"].as<std::int64_t>();
  o.save_dir = vm.count("save") ? optional_string(vm, "save") : optional_string(vm, "out");
  o.save_every = vm["save-every"].as<std::int64_t>();
  o.keep_last = vm["keep-last"].as<int>();
  o.metrics_path = optional_string(vm, "metrics");
  o.seed = vm["seed"].as<std::uint64_t>();
  o.recompute = vm["recompute"].as<bool>();
  o.moe_force_balance = vm["moe-force-balance"].as<bool>();
  const auto policy = vm["on-nonfinite"].as<std::string>();
  require(policy == "stop" || policy == "skip", "train: --on-nonfinite '", policy,
          "'; valid: stop, skip");
  o.on_nonfinite = policy == "stop" ? NonFinitePolicy::stop : NonFinitePolicy::skip;
  o.sample_mode = vm["sample-mode"].as<std::string>();
  o.objective = vm["objective"].as<std::string>();
  require(!(vm["logit-shift"].as<bool>() && vm["no-logit-shift"].as<bool>()),
          "train: give --logit-shift or --no-logit-shift, not both");
  o.diffusion.block_size = vm["block-size"].as<std::int64_t>();
  o.diffusion.masking.schedule =
      diffusion::parse_mask_schedule(vm["mask-schedule"].as<std::string>());
  o.diffusion.masking.beta = vm["mask-beta"].as<double>();
  o.diffusion.noise.sampling =
      diffusion::parse_noise_sampling(vm["noise-sampling"].as<std::string>());
  o.diffusion.noise.per_sequence = vm["noise-per-sequence"].as<bool>();
  o.diffusion.logit_shift = !vm["no-logit-shift"].as<bool>();
  o.diffusion.ar_weight = vm["ar-weight"].as<double>();
  o.tp = vm["tp"].as<int>();
  o.pp = vm["pp"].as<int>();
  o.dp = vm["dp"].as<int>();
  o.ep = vm["ep"].as<int>();
  o.etp = vm["etp"].as<int>();
  o.zero1 = vm["zero1"].as<bool>();
  o.overlap_grad_reduce = !vm["no-overlap-grad-reduce"].as<bool>();
  o.interleave_pairs = vm["interleave-pairs"].as<bool>();
  o.deterministic = !vm["nondeterministic"].as<bool>();
  o.expert_streams = vm["expert-streams"].as<int>();
  o.timers = vm["timers"].as<bool>();
  o.device = parse_device(vm["device"].as<std::string>());
  // MPI only when the run spans ranks (mpirun sets OMPI_COMM_WORLD_SIZE); a one-rank run stays
  // a plain process.
  const char* launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  const int ranks = launched != nullptr ? std::atoi(launched) : 1;
  if (vm.count("plan")) {
    const planner::Plan plan = planner::load_plan(vm["plan"].as<std::string>());
    planner::require_world_size(plan, ranks);
    apply_plan(plan, vm, o);
  }
  const int needed = o.tp * o.pp * o.dp;
  require(ranks == needed, "train: --tp ", o.tp, " x --pp ", o.pp, " x --dp ", o.dp, " needs ",
          needed, " ranks but this run has ", ranks, "; start it with mpirun -np ", needed);
  std::optional<MpiSession> mpi;
  std::unique_ptr<Communicator> world;
  if (ranks > 1) {
    mpi.emplace(nullptr, nullptr);
    world = MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions::from_environment());
  }
  const Logger log(mpi ? mpi->world_rank() : 0);
  const RunSummary summary = run_training(o, log, {}, std::move(world));
  if (summary.last_val_loss) log.info(concat("final validation loss ", *summary.last_val_loss));
  return 0;
}

}  // namespace

Command train_command() {
  return {"train",
          "train a model (CPU backend, or --device cuda on GPUs; under mpirun with "
          "--tp/--pp/--dp/--ep over MPI ranks, NCCL between GPUs)",
          train_options,
          {},
          run_train};
}

}  // namespace metamorph::cli

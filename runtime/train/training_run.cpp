#include "runtime/train/training_run.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "models/init.hpp"
#include "models/parameter_transfer.hpp"
#include "models/tp_group_expert_exchange.hpp"
#include "parallel/ep_expert_exchange.hpp"
#include "parallel/groups.hpp"
#include "parallel/tensor_parallel_group.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/background_save.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/checkpoint/save_signal.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/step_timers.hpp"
#include "runtime/data/data_manifest.hpp"
#include "runtime/data/indexed_dataset.hpp"
#include "runtime/diffusion/diffusion_training.hpp"
#include "runtime/diffusion/mask_token.hpp"
#include "runtime/log/metrics_writer.hpp"
#include "runtime/log/progress.hpp"
#include "runtime/train/compute_device.hpp"
#include "runtime/train/dataset_rows.hpp"
#include "runtime/train/moe_metrics.hpp"
#include "runtime/train/replica_sync.hpp"
#include "runtime/train/timer_report.hpp"
#include "runtime/train/zero1.hpp"

namespace metamorph {

namespace {

void validate(const RunOptions& o) {
  const int sources = !o.model_path.empty() + !o.model_config.is_null() + !o.init_path.empty() +
                      !o.resume_path.empty();
  require(sources == 1, "train: give exactly one of --model (fresh), --init CKPT (start from ",
          "weights) or --resume DIR (continue a run); got ", sources);
  require(!o.data_prefix.empty(),
          "train: --data PREFIX is required (see `metamorph data prepare`)");
  require(o.steps > 0, "train: --steps must be positive, got ", o.steps);
  require(o.seq > 0, "train: --seq must be positive, got ", o.seq);
  require(o.expert_streams >= 1, "train: --expert-streams must be at least 1, got ",
          o.expert_streams);
  require(o.micro_batch > 0, "train: --micro-batch must be positive, got ", o.micro_batch);
  require(o.global_batch > 0 && o.global_batch % o.micro_batch == 0, "train: --global-batch (",
          o.global_batch, ") must be a positive multiple of --micro-batch (", o.micro_batch, ")");
  require(o.lr > 0 && std::isfinite(o.lr), "train: --lr must be positive, got ", o.lr);
  require(o.warmup >= 0 && o.warmup < o.steps, "train: --warmup (", o.warmup,
          ") must be in [0, --steps)");
  require(o.save_every >= 0, "train: --save-every must be >= 0, got ", o.save_every);
  require(o.keep_last >= 0, "train: --keep-last must be >= 0, got ", o.keep_last);
  require(o.save_dir.empty() || !std::filesystem::exists(o.save_dir) ||
              std::filesystem::is_directory(o.save_dir),
          "train: --save ", o.save_dir, " exists and is not a directory");
  require(o.save_every == 0 || !o.save_dir.empty(), "train: --save-every needs --save DIR");
  require(o.objective == "ar" || o.objective == "diffusion", "train: --objective '", o.objective,
          "'; valid: ar, diffusion");
  require(o.etp == 0 || o.etp == o.tp || o.tp == 1 || (o.etp == 1 && o.ep == o.tp), "train: --etp ",
          o.etp, " with --tp ", o.tp, " and --ep ", o.ep, "; with tensor parallelism the experts ",
          "either follow the dense split (leave --etp out or pass --etp ", o.tp,
          ") or are spread whole over the TP group (--etp 1 --ep ", o.tp,
          "); a separate expert-TP size needs --tp 1");
  if (o.interleave_pairs) {
    require(o.tp > 1,
            "train: --interleave-pairs hides tensor-parallel all-reduces behind a second ",
            "micro-batch and needs --tp > 1, got --tp ", o.tp);
    require(o.pp == 1, "train: --interleave-pairs runs on one pipeline stage, got --pp ", o.pp,
            " (the 1F1B schedule already keeps several micro-batches in flight)");
    require(o.global_batch >= 2 * o.micro_batch * o.dp, "train: --interleave-pairs needs at least ",
            "two micro-batches per data-parallel replica and step; --global-batch ", o.global_batch,
            " gives ", o.global_batch / (o.micro_batch * o.dp), " (--micro-batch ", o.micro_batch,
            ", --dp ", o.dp, ")");
  }
}

nlohmann::json metrics_json(const StepMetrics& m) {
  nlohmann::json j = {{"step", m.step},
                      {"loss", m.loss},
                      {"lr", m.lr},
                      {"grad_norm", m.grad_norm},
                      {"tokens", m.tokens},
                      {"tokens_per_s", m.tokens_per_s},
                      {"peak_bytes", m.peak_bytes},
                      {"skipped", m.skipped}};
  if (m.peak_bytes_max > 0) j["peak_bytes_max"] = m.peak_bytes_max;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  if (!m.comm_bytes.empty()) j["comm_bytes"] = m.comm_bytes;
  if (!m.timers.empty()) {
    nlohmann::json timers = nlohmann::json::object();
    for (const auto& [name, seconds] : m.timers) timers[name] = seconds;
    j["timers"] = timers;
  }
  if (!m.moe.empty()) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : m.moe)
      layers.push_back({{"layer", l.layer},
                        {"tokens_min", l.tokens_min},
                        {"tokens_max", l.tokens_max},
                        {"tokens_cv", l.tokens_cv},
                        {"aux_loss", l.aux_loss},
                        {"z_loss", l.z_loss},
                        {"router_entropy", l.router_entropy},
                        {"drop_rate", l.drop_rate},
                        {"tokens_per_expert", l.tokens_per_expert}});
    j["moe"] = layers;
  }
  return j;
}

}  // namespace

RunSummary run_training(const RunOptions& o, const Logger& log,
                        const std::function<void(const StepMetrics&)>& on_step,
                        std::unique_ptr<Communicator> world) {
  validate(o);
  Arena arena;  // host: scalar reductions and the CPU backend
  CpuBackend cpu(arena);
  // The backend the model computes on; the CPU one itself unless --device cuda.
  std::optional<ComputeDevice> gpu;
  if (o.device != Device::cpu)
    gpu.emplace(
        make_compute_device(o.device, node_local_rank(), o.deterministic, o.expert_streams));
  world = device_world(std::move(world), o.device);
  Backend& backend = gpu ? *gpu->backend : static_cast<Backend&>(cpu);
  const Layout layout{o.tp, o.pp, o.dp, o.ep, o.etp};
  validate_layout(layout, layout.world_size());  // before any rank waits for another
  std::optional<ParallelGroups> groups;
  if (world) {
    groups.emplace(std::move(world), layout);
  } else {
    require(layout.world_size() == 1, "train: layout ", layout.describe(), " needs ",
            layout.world_size(), " ranks; start it with mpirun -np ", layout.world_size());
  }
  if (layout.world_size() > 1)
    log.info(concat("layout: ", layout.describe(), o.zero1 ? ", ZeRO-1" : "",
                    o.interleave_pairs ? ", interleaved pairs" : ""));
  const int world_rank = groups ? groups->world().rank() : 0;
  const int dp_rank = groups ? groups->coordinates().dp : 0;
  TensorParallel tp;
  if (groups && o.tp > 1) tp = tensor_parallel_over(groups->tp());

  // Model and, on resume, the run's state.
  ModelConfig config;
  std::optional<CheckpointState> resumed;
  std::int32_t checkpoint_mask_token = -1;  // a diffusion checkpoint's [MASK]
  std::string weights_from = !o.init_path.empty() ? o.init_path : o.resume_path;
  if (!o.model_path.empty()) {
    config = load_model_config(o.model_path);
  } else if (!o.model_config.is_null()) {
    config = model_config_from_json(o.model_config);
  } else {
    const auto dir = resolve_checkpoint(weights_from);
    const CheckpointState probe = checkpoint::read_index_file(dir).state;
    config = model_config_from_json(probe.config);
    weights_from = dir.string();
    if (probe.extra.value("objective", std::string("ar")) == "diffusion")
      checkpoint_mask_token = probe.extra.value("mask_token", -1);
  }
  require(!o.moe_force_balance || config.moe.enabled(),
          "train: --moe-force-balance needs an MoE model (num_experts > 0); this model is dense");
  if (o.moe_force_balance) {
    config.moe.force_balance = true;
    log.info(
        "MoE routing: --moe-force-balance, a benchmark mode: every token's experts are a "
        "fixed balanced assignment, not the router's choice (losses say nothing about "
        "model quality)");
  }
  // Block diffusion needs [MASK]: given, the checkpoint's, or one more vocabulary row. The model
  // is then built for the grown vocabulary (under tensor parallelism its vocabulary split is
  // the grown one), and the weights are grown whole on the host and copied into the shards.
  diffusion::DiffusionOptions diffusion_options = o.diffusion;
  if (o.objective == "diffusion" && diffusion_options.mask_token < 0)
    diffusion_options.mask_token = checkpoint_mask_token;
  const bool add_mask = o.objective == "diffusion" && diffusion_options.mask_token < 0;
  require(!add_mask || o.resume_path.empty(), "train: --resume of an AR run with --objective ",
          "diffusion; start the diffusion run with --init CKPT instead");
  const ModelConfig source_config = config;  // before [MASK]
  if (add_mask) config.vocab_size += 1;
  require(o.seq <= config.max_position_embeddings, "train: --seq ", o.seq,
          " exceeds the model's max_position_embeddings ", config.max_position_embeddings);
  validate_against_model(
      layout, static_cast<int>(config.num_heads), static_cast<int>(config.num_kv_heads),
      static_cast<int>(config.intermediate_size), static_cast<int>(config.vocab_size),
      static_cast<int>(config.num_layers), static_cast<int>(config.moe.num_experts),
      static_cast<int>(config.moe.expert_intermediate_size));
  const PipelineStage stage =
      pipeline_stage(groups ? groups->coordinates().pp : 0, o.pp, config.num_layers);
  // Expert parallelism: this rank's experts, and the exchange that reaches the others.
  ExpertParallel experts;
  std::optional<EpExpertExchange> exchange;
  std::optional<TpGroupExpertExchange> tp_group_exchange;
  if (groups) {
    experts.rank = groups->coordinates().ep;
    experts.size = o.ep;
    experts.tp_rank = groups->coordinates().etp;
    experts.tp_size = layout.expert_tp();
    if (layout.experts_over_tp()) {
      // Whole experts spread over the TP group, whose ranks hold the same tokens: no rows move
      // (EP rank = TP rank; the layer's TP all-reduce sums the ranks' partial outputs).
      tp_group_exchange.emplace(config.moe.num_experts, experts.rank, o.ep, backend);
      experts.exchange = &*tp_group_exchange;
    } else if (o.ep > 1 || layout.expert_tp() != o.tp) {
      // Expert-TP across data-parallel replicas (tp 1): their tokens differ, so the exchange
      // gathers them over the expert-TP group (with etp == tp the TP group's tokens are the same).
      Communicator* gather = o.tp == 1 ? &groups->expert_tp() : nullptr;
      exchange.emplace(groups->ep(), config.moe.num_experts, backend, gather);
      experts.exchange = &*exchange;
    }
  }
  // Expert gradients then reduce over expert-DP only.
  const bool expert_parallel = o.ep > 1 || layout.expert_tp() != o.tp;
  const int edp_rank = groups ? groups->coordinates().edp : 0;
  ParameterSet params = make_parameters(backend, config, tp, stage, experts);
  init_parameters(backend, params, config, o.seed);
  // With tied embeddings the last stage holds a second copy of the embedding as its LM head.
  const bool tied_copy = o.pp > 1 && stage.last() && config.tie_word_embeddings;
  auto is_tied_copy = [&](const Parameter& p) {
    return tied_copy && p.name == "model.embed_tokens.weight";
  };
  auto sum_over_model = [&](double x) {
    return o.tp * o.pp > 1 ? sum_scalar(groups->group(GroupKind::model_parallel), x, arena) : x;
  };
  // ZeRO-1 allocates each replica's optimizer rows before AdamW would allocate whole ones.
  // Under expert parallelism the routed experts shard over the expert-DP group instead.
  const bool zero1 = o.zero1 && o.dp > 1;
  const bool expert_zero1 = zero1 && expert_parallel && layout.expert_dp() > 1;
  // Data parallelism reduces gradient buckets while the last micro-batch's backward runs; not
  // where a bucket could still change afterwards (QK-norm and router gradients summed over TP
  // in reduce_gradients).
  const bool overlap_dp = o.overlap_grad_reduce && groups && o.dp > 1 &&
                          !(tp.active() && (config.qk_norm || config.moe.enabled()));
  // ZeRO-1 without overlap keeps one reduce-scatter of every gradient.
  const std::int64_t zero_bucket = overlap_dp ? o.grad_bucket_elements : 0;
  std::optional<Zero1> zero, expert_zero;
  if (zero1 && !expert_parallel) zero.emplace(backend, params, groups->dp(), nullptr, zero_bucket);
  if (zero1 && expert_parallel)
    zero.emplace(
        backend, params, groups->dp(),
        [](const Parameter& p) { return !is_expert_parameter(p.name); }, zero_bucket);
  if (expert_zero1)
    expert_zero.emplace(
        backend, params, groups->expert_dp(),
        [](const Parameter& p) { return is_expert_parameter(p.name); }, zero_bucket);
  auto sum_for_norm = [&](double x) {
    x = sum_over_model(x);
    return zero1 ? sum_scalar(groups->dp(), x, arena) : x;
  };
  // The experts' squared norm: every expert once, over the EP, expert-TP and pipeline groups
  // (and expert-DP when ZeRO-1 splits their rows).
  AdamW::ReduceSum sum_experts_for_norm;
  if (expert_parallel)
    sum_experts_for_norm = [&](double x) {
      x = sum_scalar(groups->ep(), x, arena);
      if (layout.expert_tp() > 1) x = sum_scalar(groups->expert_tp(), x, arena);
      if (o.pp > 1) x = sum_scalar(groups->pp(), x, arena);
      return expert_zero1 ? sum_scalar(groups->expert_dp(), x, arena) : x;
    };
  AdamW optimizer(
      backend, params, o.adamw, sum_for_norm,
      [&](const Parameter& p) {
        return (tp.rank == 0 || tp_split_dim(p.name) >= 0) && !is_tied_copy(p);
      },
      sum_experts_for_norm);
  // [MASK] as the mean embedding row (and a zero untied head row) of the whole source model.
  auto grow_mask_row = [&](ParameterSet& whole) {
    ModelConfig grown = source_config;
    diffusion_options.mask_token = diffusion::add_mask_token(cpu, grown, whole);
    MM_ASSERT(grown.vocab_size == config.vocab_size, "[MASK] grew the vocabulary to ",
              grown.vocab_size, ", the model has ", config.vocab_size);
    copy_blocks_from_whole(backend, whole, params);
    log.info(concat("diffusion: added [MASK] as token ", diffusion_options.mask_token,
                    " (vocabulary now ", config.vocab_size, ")"));
  };
  if (!o.model_path.empty() || !o.model_config.is_null()) {
    if (add_mask) {
      ParameterSet whole = make_parameters(cpu, source_config);
      init_parameters(cpu, whole, source_config, o.seed);
      grow_mask_row(whole);
    }
    log.info(concat("model: ", parameter_count(config), " parameters, fresh from seed ", o.seed));
  } else {
    LoadOptions load;
    load.with_optimizer = !o.resume_path.empty();
    CheckpointState state;
    if (add_mask) {
      // Grown whole on the host, then each rank's blocks uploaded (fp32 masters, bf16 weights).
      ParameterSet whole = make_parameters(cpu, source_config);
      state = load_checkpoint(weights_from, whole, load);
      grow_mask_row(whole);
    } else if (gpu) {
      // Checkpoints hold fp32 masters: read into host copies, then upload (and round to bf16).
      ParameterSet host = host_parameters(backend, params, load.with_optimizer);
      state = load_checkpoint(weights_from, host, load);
      upload_parameters(backend, host, params, load.with_optimizer);
      // Under ZeRO-1 each replica loaded its own rows (of its fp32 masters): the weights'
      // other rows come from the other replicas.
      if (zero) zero->all_gather_parameters();
      if (expert_zero) expert_zero->all_gather_parameters();
    } else {
      state = load_checkpoint(weights_from, params, load);
    }
    if (!o.resume_path.empty()) resumed = state;
    log.info(concat("model: ", parameter_count(config), " parameters from ", weights_from,
                    resumed ? concat(" (resuming at step ", state.step, ")") : std::string()));
  }

  // Data: the tokenizer's vocabulary must fit the model.
  const data::IndexedDataset dataset(o.data_prefix);
  data::LoaderOptions train_options;
  train_options.seq = o.seq;
  train_options.seed = o.seed;
  train_options.mode = data::sample_mode_from_name(o.sample_mode);
  train_options.validation_fraction = data::recorded_validation_fraction(o.data_prefix);
  DatasetRows train_rows(dataset, train_options, dp_rank, o.dp);
  std::optional<DatasetRows> validation_rows;
  if (train_options.validation_fraction > 0) {
    data::LoaderOptions v = train_options;
    v.split = data::Split::kValidation;
    v.shuffle = false;
    validation_rows.emplace(dataset, v);
  }

  TrainOptions t;
  t.steps = o.steps;
  t.micro_batch = o.micro_batch;
  t.global_batch = o.global_batch;
  t.lr = LrSchedule{o.lr, o.min_lr >= 0 ? o.min_lr : o.lr / 10, o.warmup, o.steps};
  t.eval_every = o.eval_every;
  t.eval_batches = o.eval_batches;
  t.on_nonfinite = o.on_nonfinite;
  t.interleave_pairs = o.interleave_pairs;
  if (groups && o.dp > 1) {
    Communicator& dp_comm = groups->dp();
    t.sync.dp_size = o.dp;
    t.sync.dp_rank = dp_rank;
    t.sync.sum_over_dp = [&dp_comm, &arena](double x) { return sum_scalar(dp_comm, x, arena); };
    t.sync.sum_counts_over_dp = [&dp_comm, &arena](std::vector<double>& counts) {
      // Integer counts, summed exactly.
      Tensor t = Tensor::empty({static_cast<std::int64_t>(counts.size())}, DType::i64, arena);
      for (std::size_t i = 0; i < counts.size(); ++i)
        t.data<std::int64_t>()[i] = static_cast<std::int64_t>(counts[i]);
      dp_comm.all_reduce(t, ReduceOp::sum);
      for (std::size_t i = 0; i < counts.size(); ++i)
        counts[i] = static_cast<double>(t.data<std::int64_t>()[i]);
    };
  }
  // Plain data parallelism all-reduces gradient buckets, ZeRO-1 reduce-scatters them, as the
  // last micro-batch's backward finalises them.
  std::optional<OverlappedGradientReduce> overlap;
  if (overlap_dp && !zero1)
    overlap.emplace(groups->dp(), params, o.grad_bucket_elements,
                    expert_parallel ? &groups->expert_dp() : nullptr);
  TransformerOptions model_options;
  model_options.recompute = o.recompute;
  Transformer model(backend, config, params, model_options, tp, stage, experts.exchange);
  if (overlap_dp) {
    t.sync.last_backward_begins = [&] {
      model.set_gradients_ready_hook([&](std::int64_t layer) {
        if (overlap) overlap->gradients_ready(layer);
        if (zero) zero->gradients_ready(layer);
        if (expert_zero) expert_zero->gradients_ready(layer);
      });
    };
    t.sync.last_backward_ends = [&] { model.set_gradients_ready_hook({}); };
  }
  t.sync.reduce_gradients = [&] {
    if (tp.active())
      for (auto& p : params.all())
        if (tp_partial_gradient(p.name)) tp.sum(p.grad);
    // The two copies of a tied embedding (first and last stage) get the sum of both gradients.
    if (o.pp > 1 && config.tie_word_embeddings && (stage.first() || stage.last()))
      groups->group(GroupKind::embedding)
          .all_reduce(params.find("model.embed_tokens.weight")->grad);
    if (zero1) {
      zero->reduce_scatter_gradients();
      // Experts with a single holder (expert-DP size 1) have nothing to sum.
      if (expert_zero1) expert_zero->reduce_scatter_gradients();
    } else if (overlap) {
      overlap->finish();
    } else if (groups && o.dp > 1 && expert_parallel) {
      reduce_flat_gradients(groups->dp(), groups->expert_dp(), params, o.grad_bucket_elements);
    } else if (groups && o.dp > 1) {
      reduce_flat_gradients(groups->dp(), params, o.grad_bucket_elements);
    }
  };
  // ZeRO-1 gathers the updated rows after the update. Overlapped, the buckets are started there
  // and each finished just before the next forward uses its layer (then the gathers of later
  // layers run behind the earlier layers' compute); anything else that reads the weights
  // (a checkpoint, the end of the run) finishes them first.
  auto finish_gathers = [&] {
    if (zero) zero->finish_all_gather();
    if (expert_zero) expert_zero->finish_all_gather();
  };
  if (zero1 && overlap_dp) {
    t.sync.after_update = [&] {
      zero->start_all_gather();
      if (expert_zero) expert_zero->start_all_gather();
    };
    model.set_parameters_needed_hook([&](std::int64_t layer) {
      if (layer >= config.num_layers) return finish_gathers();  // final norm and head
      zero->parameters_needed(layer);
      if (expert_zero) expert_zero->parameters_needed(layer);
    });
  } else if (zero1) {
    t.sync.after_update = [&] {
      zero->all_gather_parameters();
      if (expert_zero) expert_zero->all_gather_parameters();
    };
  }
  // At most one send in flight per direction: a stage waits for its previous send before it
  // starts the next, so a step holds one outgoing buffer each way instead of one per
  // micro-batch (the receiver posts each receive without waiting on the sender, so this never
  // blocks the schedule for long).
  struct InFlightSend {
    std::unique_ptr<CommRequest> request;
    Tensor buffer;
  };
  std::array<InFlightSend, 2> sends;  // [forward, backward]
  if (groups && o.pp > 1) {
    Communicator& pp = groups->pp();
    const int me = pp.rank();
    constexpr int kForwardTag = 0, kBackwardTag = 1;
    auto send = [&pp, &sends](const Tensor& x, int direction, int peer, int tag) {
      InFlightSend& slot = sends[static_cast<std::size_t>(direction)];
      if (slot.request) slot.request->wait();
      slot.request.reset();
      slot.buffer = Tensor();
      slot.request = pp.start_send(x, peer, tag);
      slot.buffer = x;
    };
    t.pipeline.send_forward = [send, me](const Tensor& x) { send(x, 0, me + 1, kForwardTag); };
    t.pipeline.recv_forward = [&pp, me](Tensor& x) { pp.recv(x, me - 1, kForwardTag); };
    t.pipeline.send_backward = [send, me](const Tensor& x) { send(x, 1, me - 1, kBackwardTag); };
    t.pipeline.recv_backward = [&pp, me](Tensor& x) { pp.recv(x, me + 1, kBackwardTag); };
    t.pipeline.wait_sends = [&sends] {
      for (auto& slot : sends) {
        if (slot.request) slot.request->wait();
        slot.request.reset();
        slot.buffer = Tensor();
      }
    };
    t.pipeline.sum_over_stages = [&pp, &arena](double x) { return sum_scalar(pp, x, arena); };
  }
  Trainer trainer(backend, model, optimizer, t, train_rows,
                  validation_rows ? &*validation_rows : nullptr);
  std::optional<diffusion::DiffusionTrainingObjective> diffusion_objective;
  if (o.objective == "diffusion") {
    diffusion_options.seed = o.seed;
    // Its passes are drawn on the host and uploaded to the compute backend's device.
    diffusion_objective.emplace(backend, model, diffusion_options);
    trainer.set_objective(&*diffusion_objective);
  }
  if (resumed) {
    require(resumed->step < o.steps, "train: the checkpoint is at step ", resumed->step,
            ", already at or past --steps ", o.steps, "; raise --steps to continue");
    train_rows.restore(resumed->data_position);
    trainer.set_progress(resumed->step, resumed->tokens);
    optimizer.set_steps_taken(resumed->extra.value("optimizer_steps", resumed->step));
  }

  // A GPU run writes periodic checkpoints in the background (its host snapshot is the download
  // anyway); the ranks commit one together once all have written it, or before the next save.
  std::unique_ptr<BackgroundSave> pending_save;
  auto seconds_since = [](std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  // Each phase adds the time the steps stood still for it to summary.save_blocked_s.
  auto finish_pending_save = [&](RunSummary& summary) {
    if (!pending_save) return;
    const auto start = std::chrono::steady_clock::now();
    summary.saved = pending_save->finish().string();
    const double waited = seconds_since(start);
    summary.save_blocked_s += waited;
    pending_save.reset();
    log.info(concat("saved ", summary.saved, " (the commit waited ", fixed(waited, 2), " s)"));
  };
  auto save = [&](RunSummary& summary, bool in_background) {
    finish_pending_save(summary);
    finish_gathers();
    const auto save_started = std::chrono::steady_clock::now();
    CheckpointState state;
    state.step = trainer.steps_done();
    state.tokens = trainer.tokens_done();
    state.config = model_config_to_json(config);
    state.layout = {
        {"tp", o.tp},    {"pp", o.pp}, {"dp", o.dp}, {"ep", o.ep}, {"etp", layout.expert_tp()},
        {"zero1", zero1}};
    state.data_position = train_rows.position();
    state.extra = {{"optimizer_steps", optimizer.steps_taken()}, {"seed", o.seed}};
    state.extra["data"] = o.data_prefix;
    if (diffusion_objective)
      state.extra.update(diffusion::diffusion_options_to_json(diffusion_options));
    SaveOptions save_options;
    save_options.keep_last = o.keep_last;
    RankContext context;
    if (groups) {
      Communicator& w = groups->world();
      context.rank = world_rank;
      context.world = w.size();
      context.all_ok = [&w, &arena](bool ok) {
        return sum_scalar(w, ok ? 0.0 : 1.0, arena) == 0.0;
      };
      context.model_replica = dp_rank;
      context.optim_replica = zero1 ? 0 : dp_rank;  // ZeRO-1 replicas hold distinct rows
      if (expert_parallel) {
        context.expert_model_replica = edp_rank;
        context.expert_optim_replica = expert_zero1 ? 0 : edp_rank;
      }
      // ZeRO-1 on a GPU: a replica's fp32 values are its masters' rows, so each writes those
      // rows of the model too (Zero1::rows_to_write keeps the whole copies to replica 0).
      if (gpu && zero1) {
        context.model_replica = context.optim_replica = 0;
        context.expert_model_replica = context.expert_optim_replica = -1;
      }
    }
    // The last stage's copy of a tied embedding is the first stage's tensor again: written once.
    // On a GPU the fp32 masters and moments are downloaded first, so the files are the same as
    // a CPU run's.
    ParameterSet downloaded = gpu ? host_parameters(backend, params, true) : ParameterSet();
    if (gpu && zero1)
      downloaded = Zero1::rows_to_write(downloaded, dp_rank, expert_parallel ? edp_rank : -1);
    ParameterSet written;
    for (const auto& p : (gpu ? downloaded : params).all())
      if (!is_tied_copy(p)) written.add(p);
    if (gpu && in_background) {
      pending_save = std::make_unique<BackgroundSave>(o.save_dir, std::move(written), state,
                                                      context, save_options);
      const double waited = seconds_since(save_started);
      summary.save_blocked_s += waited;
      log.info(concat("checkpoint of step ", state.step, ": downloaded in ", fixed(waited, 2),
                      " s, writing in the background"));
      return;
    }
    summary.saved = save_checkpoint(o.save_dir, written, state, context, save_options).string();
    summary.save_blocked_s += seconds_since(save_started);
    log.info(concat("saved ", summary.saved));
  };

  RunSummary summary;
  SaveSignalGuard stop;
  std::optional<MetricsWriter> metrics;
  if (!o.metrics_path.empty() && world_rank == 0)
    metrics.emplace(o.metrics_path, resumed.has_value());
  ProgressOptions progress_options;
  progress_options.line_interval_s = 10.0;
  progress_options.line_every = std::max<std::int64_t>(1, o.steps / 20);
  ProgressLine progress(log, "train", o.steps, progress_options);
  std::optional<StepTimers> timers;
  if (o.timers) timers.emplace(backend.make_clock());
  const AttachedTimers attached(backend, timers ? &*timers : nullptr);
  // The run's first step (allocations, plans, lazy NCCL connections) stays out of the summary
  // when there are others.
  TimerReport timer_report;
  const std::int64_t first_step = trainer.steps_done() + 1;
  while (trainer.steps_done() < o.steps) {
    StepMetrics m = trainer.step();
    if (!m.timers.empty() && (m.step > first_step || o.steps == first_step))
      timer_report.add_step(m.timers);
    // Every rank must agree to stop, or the ones that go on would wait forever for the others.
    const bool signalled = groups ? sum_scalar(groups->world(), stop.requested() != 0, arena) > 0
                                  : stop.requested() != 0;
    // This step's traffic per group (a checkpoint's own messages land in the next step's).
    if (groups) {
      for (GroupKind kind : kAllGroupKinds) {
        Communicator& c = groups->group(kind);
        if (c.bytes_sent() > 0) m.comm_bytes[group_name(kind)] = c.bytes_sent();
        c.reset_counters();
      }
      m.comm_bytes["world"] = groups->world().bytes_sent();
      // Reporting, not training traffic: kept out of the counts like the MoE metrics below.
      m.peak_bytes_max = static_cast<std::size_t>(
          max_count(groups->world(), static_cast<std::int64_t>(m.peak_bytes), arena));
      groups->world().reset_counters();
    }
    if (groups && o.pp > 1 && config.moe.enabled()) {
      // Every stage's MoE layers into the line rank 0 writes. Reporting, not training traffic:
      // kept out of the byte counts the planner's communication model is checked against.
      gather_moe_metrics(groups->pp(), m, config.num_layers, config.moe.num_experts, arena);
      groups->pp().reset_counters();
      groups->world().reset_counters();
    }
    summary.steps = m.step;
    summary.last_loss = m.loss;
    if (m.val_loss) summary.last_val_loss = m.val_loss;
    std::vector<ProgressField> fields = {{"loss", fixed(m.loss, 4)},
                                         {"lr", scientific(m.lr, 2)},
                                         {"|g|", fixed(m.grad_norm, 2)},
                                         {"tok/s", si(m.tokens_per_s)}};
    if (m.val_loss) fields.push_back({"val", fixed(*m.val_loss, 4)});
    if (!m.moe.empty()) {
      // The router losses summed over this stage's MoE layers; per-layer detail in the metrics.
      double aux = 0.0, dropped = 0.0;
      for (const auto& l : m.moe) {
        aux += l.aux_loss + l.z_loss;
        dropped = std::max(dropped, l.drop_rate);
      }
      fields.push_back({"moe", fixed(aux, 4)});
      if (dropped > 0) fields.push_back({"drop", fixed(dropped * 100, 1) + "%"});
    }
    progress.update(m.step, fields);
    if (m.val_loss) log.info(concat("step ", m.step, ": validation loss ", fixed(*m.val_loss, 4)));
    if (metrics) metrics->write(metrics_json(m));
    if (on_step) on_step(m);
    const bool last = trainer.steps_done() == o.steps;
    if (pending_save) {
      // Commit as soon as every rank's file is on disk (all ranks decide alike).
      const bool mine = pending_save->written();
      const bool all = groups ? sum_scalar(groups->world(), mine ? 0.0 : 1.0, arena) == 0.0 : mine;
      if (all) finish_pending_save(summary);
    }
    if (!o.save_dir.empty() &&
        (last || signalled || (o.save_every > 0 && m.step % o.save_every == 0)))
      save(summary, !(last || signalled));
    if (signalled && !last) {
      log.info(
          concat("received signal ", stop.requested(), "; saved and stopping at step ", m.step));
      summary.stopped_by_signal = true;
      break;
    }
  }
  finish_pending_save(summary);
  finish_gathers();
  progress.finish();
  for (const std::string& line : timer_report.lines()) log.info(line);
  if (!o.save_dir.empty())
    log.info(concat("checkpoints: training waited ", fixed(summary.save_blocked_s, 2),
                    " s for them in total"));
  return summary;
}

}  // namespace metamorph

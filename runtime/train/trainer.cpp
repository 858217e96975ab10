#include "runtime/train/trainer.hpp"

#include <array>
#include <chrono>
#include <cmath>
#include <optional>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/core/step_timers.hpp"

namespace metamorph {

Trainer::Trainer(Backend& backend, Transformer& model, AdamW& optimizer, TrainOptions options,
                 BatchSource& train_data, BatchSource* validation_data)
    : backend_(backend),
      model_(model),
      optimizer_(optimizer),
      options_(options),
      train_(train_data),
      validation_(validation_data) {
  require(options_.micro_batch > 0, "--micro-batch must be positive, got ", options_.micro_batch);
  const std::int64_t replicas = options_.sync.dp_size;
  require(options_.global_batch % (options_.micro_batch * replicas) == 0, "--global-batch (",
          options_.global_batch, ") must be a multiple of --micro-batch (", options_.micro_batch,
          ") times the data-parallel size (", replicas, ")");
}

void Trainer::split_rows(const std::int32_t* rows, std::int64_t count, std::int64_t seq,
                         Tensor& inputs, Tensor& targets) {
  // Filled on the host, then moved to the backend's device (the identity on the CPU).
  inputs = backend_.host_empty({count, seq}, DType::i32);
  targets = backend_.host_empty({count, seq}, DType::i32);
  auto* in = inputs.data<std::int32_t>();
  auto* tg = targets.data<std::int32_t>();
  for (std::int64_t r = 0; r < count; ++r) {
    const std::int32_t* row = rows + r * (seq + 1);
    for (std::int64_t i = 0; i < seq; ++i) {
      in[r * seq + i] = row[i];
      tg[r * seq + i] = row[i + 1];
    }
  }
  inputs = backend_.from_host(inputs, DType::i32);
  targets = backend_.from_host(targets, DType::i32);
}

ModelPass Trainer::next_token_pass(const std::int32_t* rows, std::int64_t count, std::int64_t seq) {
  ModelPass pass;
  split_rows(rows, count, seq, pass.tokens, pass.targets);
  pass.mask = model_.options().mask;
  return pass;
}

Tensor Trainer::forward_pass(const ModelPass& pass, bool keep) {
  const PipelineStage& stage = model_.stage();
  Tensor input;
  if (!stage.first()) {
    input = backend_.activation({pass.tokens.numel(), model_.config().hidden_size});
    options_.pipeline.recv_forward(input);
  }
  // Next-token passes leave the positions to the model (0..seq-1).
  const Tensor out = pass.positions.defined()
                         ? model_.stage_forward(pass.tokens, pass.positions, pass.mask, input, keep)
                         : model_.stage_forward(pass.tokens, input, keep);
  if (!stage.last()) options_.pipeline.send_forward(out);
  return out;
}

StepMetrics Trainer::step() {
  const auto start = std::chrono::steady_clock::now();
  std::optional<TimedRegion> whole(std::in_place, backend_, "step");
  backend_.arena().reset_peak();
  // This replica's rows of the global batch.
  const std::int64_t seq = train_.seq(), rows = options_.global_batch / options_.sync.dp_size;
  std::vector<std::int32_t> batch(static_cast<std::size_t>(rows * (seq + 1)));
  train_.next(options_.global_batch, batch.data());
  // The loss is a mean over the global batch's counted targets, known before any backward.
  std::int64_t local_counted = 0;
  for (std::int64_t r = 0; r < rows && objective_ == nullptr; ++r)
    for (std::int64_t i = 1; i <= seq; ++i)
      local_counted +=
          batch[static_cast<std::size_t>(r * (seq + 1) + i)] != model_.options().ignore_index;
  const auto counted = objective_ != nullptr ? objective_->loss_tokens(options_.global_batch, seq)
                                             : static_cast<std::int64_t>(options_.sync.sum_over_dp(
                                                   static_cast<double>(local_counted)));
  const float grad_scale = counted > 0 ? 1.0f / static_cast<float>(counted) : 0.0f;

  optimizer_.zero_grad();
  for (auto& [layer, block] : model_.moe_blocks()) block->reset_stats();
  // Every micro-batch as model passes (an objective may make more than one per micro-batch),
  // then all of them through the 1F1B schedule.
  std::vector<ModelPass> passes;
  for (std::int64_t first = 0; first < rows; first += options_.micro_batch) {
    const std::int32_t* micro = batch.data() + first * (seq + 1);
    if (objective_ == nullptr) {
      passes.push_back(next_token_pass(micro, options_.micro_batch, seq));
      continue;
    }
    // Replicas hold contiguous slices of the global batch (SampleLoader::next_batch).
    const std::int64_t global_first = options_.sync.dp_rank * rows + first;
    for (auto& pass : objective_->training_passes(micro, options_.micro_batch, seq, steps_done_,
                                                  global_first, options_.global_batch))
      passes.push_back(std::move(pass));
  }
  double loss_sum = 0.0;
  {
    const TimedRegion timed(backend_, "forward-backward");
    loss_sum = options_.interleave_pairs ? run_interleaved_pairs(passes, grad_scale)
                                         : run_one_f_one_b(passes, grad_scale);
  }
  {
    const TimedRegion timed(backend_, "gradient reduce");
    options_.sync.reduce_gradients();
  }
  loss_sum = options_.sync.sum_over_dp(options_.pipeline.sum_over_stages(loss_sum));
  StepMetrics m;
  m.step = steps_done_ + 1;
  m.loss = counted > 0 ? loss_sum / static_cast<double>(counted) : 0.0;
  m.grad_norm = optimizer_.grad_norm();
  m.lr = options_.lr.at(m.step);
  if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm)) {
    if (options_.on_nonfinite == NonFinitePolicy::stop)
      throw CheckFailed(concat("step ", m.step, ": non-finite ",
                               std::isfinite(m.loss) ? "gradient norm" : "loss", " (loss ", m.loss,
                               ", grad norm ", m.grad_norm,
                               "); lower --lr or use --on-nonfinite skip"));
    m.skipped = true;
    optimizer_.zero_grad();
  } else {
    const TimedRegion timed(backend_, "optimizer");
    optimizer_.step(m.lr, m.grad_norm);
    options_.sync.after_update();
  }
  m.moe = finish_moe_step(!m.skipped);
  whole.reset();
  if (backend_.timers() != nullptr) m.timers = backend_.timers()->collect();
  ++steps_done_;
  tokens_done_ += options_.global_batch * seq;
  m.tokens = tokens_done_;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.tokens_per_s = static_cast<double>(options_.global_batch * seq) / std::max(seconds, 1e-9);
  m.peak_bytes = backend_.arena().peak_bytes();
  const bool last = steps_done_ == options_.steps;
  if (validation_ != nullptr &&
      (last || (options_.eval_every > 0 && steps_done_ % options_.eval_every == 0)))
    m.val_loss = validate();
  return m;
}

std::vector<MoeLayerMetrics> Trainer::finish_moe_step(bool updated) {
  std::vector<MoeLayerMetrics> out;
  for (auto& [layer, block] : model_.moe_blocks()) {
    const MoeStats& s = block->stats();
    std::vector<double> counts = s.expert_tokens;
    // Slots and drops ride along so one reduction sums everything over the replicas.
    counts.push_back(static_cast<double>(s.slots));
    counts.push_back(static_cast<double>(s.dropped));
    options_.sync.sum_counts_over_dp(counts);
    const double dropped = counts.back();
    counts.pop_back();
    const double slots = counts.back();
    counts.pop_back();
    // Every replica applies the same rule to the same summed loads, so the biases stay equal.
    if (updated) block->update_balancing_bias(counts);
    MoeLayerMetrics m;
    m.layer = layer;
    double sum = 0.0, sum_sq = 0.0;
    m.tokens_min = counts.empty() ? 0.0 : counts[0];
    for (double c : counts) {
      m.tokens_min = std::min(m.tokens_min, c);
      m.tokens_max = std::max(m.tokens_max, c);
      sum += c;
      sum_sq += c * c;
    }
    const double n = static_cast<double>(counts.size()), mean = sum / n;
    m.tokens_cv = mean > 0 ? std::sqrt(std::max(0.0, sum_sq / n - mean * mean)) / mean : 0.0;
    const double forwards = static_cast<double>(std::max<std::int64_t>(1, s.forwards));
    m.aux_loss = s.aux_loss / forwards;
    m.z_loss = s.z_loss / forwards;
    m.router_entropy = s.entropy / forwards;
    m.drop_rate = slots > 0 ? dropped / slots : 0.0;
    m.tokens_per_expert = counts;
    block->reset_stats();
    out.push_back(m);
  }
  return out;
}

double Trainer::run_one_f_one_b(const std::vector<ModelPass>& passes, float grad_scale) {
  const PipelineStage& stage = model_.stage();
  const PipelineLinks& links = options_.pipeline;
  const auto m = static_cast<std::int64_t>(passes.size());
  const std::int64_t warmup = std::min<std::int64_t>(stage.count - stage.index - 1, m);
  double loss_sum = 0.0;
  auto forward = [&](std::int64_t i) { forward_pass(passes[static_cast<std::size_t>(i)], true); };
  auto backward = [&](std::int64_t i) {
    const bool last_backward = i == m - 1;
    if (last_backward) options_.sync.last_backward_begins();
    const ModelPass& pass = passes[static_cast<std::size_t>(i)];
    Tensor grad;
    if (!stage.last()) {
      grad = backend_.activation({pass.tokens.numel(), model_.config().hidden_size});
      links.recv_backward(grad);
    }
    LossSum loss;
    const Tensor dx = model_.stage_backward(pass.targets, grad, grad_scale, &loss, pass.weights);
    loss_sum += loss.sum;
    if (last_backward) options_.sync.last_backward_ends();
    if (!stage.first()) links.send_backward(dx);
  };
  for (std::int64_t i = 0; i < warmup; ++i) forward(i);
  for (std::int64_t i = 0; i < m - warmup; ++i) {
    forward(warmup + i);
    backward(i);
  }
  for (std::int64_t i = m - warmup; i < m; ++i) backward(i);
  links.wait_sends();
  return loss_sum;
}

double Trainer::run_interleaved_pairs(const std::vector<ModelPass>& passes, float grad_scale) {
  MM_ASSERT(model_.stage().count == 1, "interleaved pairs on a pipeline stage");
  const std::size_t m = passes.size();
  double loss_sum = 0.0;
  for (std::size_t i = 0; i + 1 < m; i += 2) {
    const bool last = i + 2 == m;
    if (last) options_.sync.last_backward_begins();
    std::array<Transformer::Pass, 2> pair;
    for (std::size_t h = 0; h < 2; ++h) {
      const ModelPass& pass = passes[i + h];
      pair[h] = {pass.tokens, pass.positions, pass.mask, pass.targets, pass.weights};
    }
    for (const LossSum& loss : model_.forward_backward_interleaved(pair, grad_scale))
      loss_sum += loss.sum;
    if (last) options_.sync.last_backward_ends();
  }
  // An odd last pass runs alone, the step's last backward.
  if (m % 2 == 1) loss_sum += run_one_f_one_b({passes.back()}, grad_scale);
  return loss_sum;
}

double Trainer::validate() {
  MM_ASSERT(validation_ != nullptr, "validate without validation data");
  const PausedTimers paused(backend_);
  const nlohmann::json start = validation_->position();
  const std::int64_t seq = validation_->seq(), rows = options_.micro_batch;
  std::vector<std::int32_t> batch(static_cast<std::size_t>(rows * (seq + 1)));
  double sum = 0.0;
  std::int64_t counted = 0;
  for (std::int64_t b = 0; b < options_.eval_batches; ++b) {
    validation_->next(rows, batch.data());
    std::vector<ModelPass> passes;
    if (objective_ != nullptr) {
      passes = objective_->validation_passes(batch.data(), rows, seq, b);
      counted += objective_->loss_tokens(rows, seq);
    } else {
      passes.push_back(next_token_pass(batch.data(), rows, seq));
      const Tensor host_targets = backend_.to_host(passes.back().targets, DType::i32);
      const auto* t = host_targets.data<std::int32_t>();
      for (std::int64_t i = 0; i < host_targets.numel(); ++i)
        counted += t[i] != model_.options().ignore_index;
    }
    // Forward only, stage by stage.
    for (const ModelPass& pass : passes) {
      const Tensor out = forward_pass(pass, false);
      if (!model_.stage().last())
        options_.pipeline.wait_sends();
      else
        sum += model_.head_loss(out, pass.targets, pass.weights).sum;
    }
  }
  sum = options_.pipeline.sum_over_stages(sum);
  validation_->restore(start);
  return counted > 0 ? sum / static_cast<double>(counted) : 0.0;
}

}  // namespace metamorph

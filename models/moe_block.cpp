#include "models/moe_block.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

#include "models/parameter_transfer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/step_timers.hpp"

namespace metamorph {

namespace {

// Rows [begin, begin + count) of t (a view).
Tensor segment_of(const Tensor& t, const ExpertExchange::RowSegment& segment) {
  return t.slice(segment.begin, segment.begin + segment.count);
}

// 0..n-1 on the backend's device (the shared expert's gate goes through the row ops).
Tensor iota(Backend& backend, std::int64_t n) {
  Tensor host = backend.host_empty({n}, DType::i32);
  auto* d = host.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<std::int32_t>(i);
  return backend.from_host(host, DType::i32);
}

}  // namespace

MoeWeights moe_weights(ParameterSet& params, const ModelConfig& config, std::int64_t layer,
                       const ExpertExchange& exchange) {
  auto need = [&params](const std::string& name) {
    Parameter* p = params.find(name);
    require(p != nullptr, "model parameters lack '", name, "' required by the MoE config");
    return p;
  };
  const MoeConfig& m = config.moe;
  const std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.";
  MoeWeights w;
  w.router = need(prefix + "gate.weight");
  if (m.scoring == RouterScoring::sigmoid_bias)
    w.score_bias = need(prefix + "gate.e_score_correction_bias");
  const std::int64_t first = exchange.first_local_expert();
  for (std::int64_t i = 0; i < exchange.num_local_experts(); ++i) {
    const std::string ep = expert_prefix(layer, first + i);
    w.experts.push_back({need(ep + "gate_proj.weight"), need(ep + "up_proj.weight"),
                         need(ep + "down_proj.weight")});
  }
  if (m.shared_expert_intermediate_size > 0) {
    w.shared = {need(prefix + "shared_expert.gate_proj.weight"),
                need(prefix + "shared_expert.up_proj.weight"),
                need(prefix + "shared_expert.down_proj.weight")};
    if (m.shared_expert_gate) w.shared_gate = need(prefix + "shared_expert_gate.weight");
  }
  return w;
}

MoeBlock::MoeBlock(Backend& backend, const MoeConfig& config, MoeWeights weights,
                   ExpertExchange& exchange)
    : backend_(backend),
      config_(config),
      spec_(router_spec(config)),
      w_(std::move(weights)),
      exchange_(exchange) {
  MM_ASSERT(config_.enabled() && w_.router != nullptr, "MoeBlock without experts or router");
  MM_ASSERT(static_cast<std::int64_t>(w_.experts.size()) == exchange_.num_local_experts(),
            "MoeBlock: ", w_.experts.size(), " expert weights for ", exchange_.num_local_experts(),
            " local experts");
  require(config_.capacity_factor == 0 || exchange_.num_local_experts() == config_.num_experts ||
              exchange_.provides_capacity_counts(),
          "MoE capacity_factor ", config_.capacity_factor,
          " under expert parallelism needs the group's per-expert counts, which this expert ",
          "exchange does not provide; use dropless routing (omit metamorph.capacity_factor) or ",
          "--ep 1");
  if (w_.shared.gate_proj != nullptr) shared_.emplace(backend_, w_.shared);
  stats_.expert_tokens.assign(static_cast<std::size_t>(config_.num_experts), 0.0);
}

std::int64_t MoeBlock::capacity(std::int64_t tokens) const {
  if (config_.capacity_factor <= 0) return -1;
  return static_cast<std::int64_t>(
      std::ceil(config_.capacity_factor * static_cast<double>(tokens * config_.top_k) /
                static_cast<double>(config_.num_experts)));
}

void MoeBlock::reset_stats() {
  stats_ = MoeStats{};
  stats_.expert_tokens.assign(static_cast<std::size_t>(config_.num_experts), 0.0);
}

Tensor MoeBlock::forward(const Tensor& x, bool record_stats) {
  const std::int64_t n = x.dim(0), h = x.dim(1), E = config_.num_experts, k = config_.top_k;
  Pending p;
  p.x = x;
  std::optional<TimedRegion> timed(std::in_place, backend_, "moe routing");
  p.logits = backend_.empty({n, E});
  backend_.matmul(x, false, w_.router->value, true, p.logits);
  p.routing = backend_.router_forward(p.logits, score_bias(), spec_);
  const RouterSummary& routed_to = p.routing.summary;
  last_aux_ = routed_to.aux_loss;
  last_z_ = routed_to.z_loss;

  // Each expert keeps its first `capacity` slots in (EP rank, token) order: on this rank the
  // first kept[e] of its slots. The permutation then puts every expert's rows in one
  // contiguous segment, in token order.
  std::int64_t cap = -1;
  std::vector<std::int64_t> before(static_cast<std::size_t>(E), 0);
  if (config_.capacity_factor > 0) {
    CapacityCounts group = exchange_.capacity_counts(routed_to.counts, n);
    MM_ASSERT(static_cast<std::int64_t>(group.rows_before.size()) == E, "capacity counts for ",
              group.rows_before.size(), " of ", E, " experts");
    before = std::move(group.rows_before);
    cap = capacity(group.tokens);
  }
  const std::int64_t slots = n * k;
  require(slots < (std::int64_t{1} << 31), "MoE block: ", n, " tokens x top-k ", k,
          " slots exceed the i32 row indices");
  std::vector<std::int64_t> kept(static_cast<std::size_t>(E), 0);
  std::int64_t rows = 0;
  for (std::size_t e = 0; e < kept.size(); ++e) {
    kept[e] = cap < 0 ? routed_to.counts[e]
                      : std::clamp<std::int64_t>(cap - before[e], 0, routed_to.counts[e]);
    rows += kept[e];
  }
  const std::int64_t dropped = slots - rows;
  p.token_index = backend_.empty({rows}, DType::i32);
  p.row_gate = backend_.empty({rows});
  p.slot_row = backend_.empty({slots}, DType::i32);
  backend_.moe_permute(p.routing.expert, p.routing.gate, kept, p.token_index, p.row_gate,
                       p.slot_row);
  if (record_stats) {
    for (std::size_t e = 0; e < kept.size(); ++e)
      stats_.expert_tokens[e] += static_cast<double>(routed_to.counts[e]);
    stats_.aux_loss += routed_to.aux_loss;
    stats_.z_loss += routed_to.z_loss;
    stats_.entropy += routed_to.entropy;
    ++stats_.forwards;
    stats_.slots += slots;
    stats_.dropped += dropped;
  }

  p.plan = exchange_.plan(kept);
  if (const auto segment = exchange_.local_segment(p.plan)) {
    // No rows move: gather this rank's experts' rows alone.
    p.local_in = backend_.activation({segment->count, h});
    backend_.gather_rows(x, segment_of(p.token_index, *segment), Tensor(), p.local_in);
  } else {
    Tensor routed = backend_.activation({rows, h});
    backend_.gather_rows(x, p.token_index, Tensor(), routed);
    p.local_in = exchange_.dispatch(p.plan, routed);
  }
  timed.reset();
  timed.emplace(backend_, "moe experts");
  const std::int64_t local_rows = p.local_in.dim(0), f = local_ffn();
  p.gate = backend_.activation({local_rows, f});
  p.up = backend_.activation({local_rows, f});
  p.act = backend_.activation({local_rows, f});
  Tensor local_out = backend_.activation({local_rows, h});
  // Each local expert's SwiGLU on its segment of rows.
  const std::vector<std::int64_t>& counts = p.plan.local_counts;
  backend_.grouped_matmul(p.local_in, expert_values(&MlpWeights::gate_proj), counts, true, p.gate);
  backend_.grouped_matmul(p.local_in, expert_values(&MlpWeights::up_proj), counts, true, p.up);
  backend_.swiglu_forward(p.gate, p.up, p.act);
  backend_.grouped_matmul(p.act, expert_values(&MlpWeights::down_proj), counts, true, local_out);
  timed.reset();
  timed.emplace(backend_, "moe combine");
  Tensor s;
  if (const auto segment = exchange_.local_segment(p.plan)) {
    // No rows move: this rank's segment alone is combined (the other ranks' experts add nothing
    // to its partial sum), without a zero-filled tensor of every rank's rows.
    p.expert_out = std::move(local_out);
    p.first_row = segment->begin;
  } else {
    // Where the exchange moves rows beside the compute (NCCL on its own stream), the shared
    // expert, which does not need them, is queued before the compute stream waits for them.
    const bool overlap = shared_ && exchange_.combines_in_background();
    ExpertExchange::PendingRows combining = exchange_.start_combine(p.plan, local_out);
    local_out = Tensor();
    if (overlap) s = shared_->forward(x);
    p.expert_out = combining.finish();
  }
  Tensor y = backend_.activation({n, h});
  backend_.moe_combine(p.expert_out, p.token_index, p.row_gate, p.slot_row, y, p.first_row,
                       /*accumulate=*/false);

  if (shared_) {
    if (!s.defined()) s = shared_->forward(x);
    if (w_.shared_gate != nullptr) {
      Tensor logit = backend_.empty({n, 1});
      backend_.matmul(x, false, w_.shared_gate->value, true, logit);
      p.shared_gate = backend_.empty({n});
      backend_.sigmoid_forward(logit, p.shared_gate);
      p.shared_index = iota(backend_, n);
      backend_.moe_combine(s, p.shared_index, p.shared_gate, p.shared_index, y);
      p.shared_out = s;
    } else {
      backend_.axpy(1.0f, s, y);
    }
  }
  pending_.push_back(std::move(p));
  return y;
}

Tensor MoeBlock::backward(const Tensor& dy, float loss_scale, DeferredWeightGrads* later) {
  MM_ASSERT(!pending_.empty(), "MoeBlock::backward without forward");
  Pending& p = pending_.front();
  const std::int64_t n = p.x.dim(0), h = p.x.dim(1), E = config_.num_experts;
  const std::int64_t rows = p.token_index.numel();

  // Gate gradients: dgate = dy[token] . expert_out; the experts' output gradient is gate * dy.
  Tensor dgate_rows = backend_.empty({rows});
  Tensor dlocal_out;
  if (const auto segment = exchange_.local_segment(p.plan)) {
    // Only this rank's rows have outputs (zero elsewhere): their gate gradients and their
    // experts' output gradients, gathered alone.
    const Tensor token_index = segment_of(p.token_index, *segment);
    dlocal_out = backend_.activation({segment->count, h});
    backend_.gather_rows(dy, token_index, Tensor(), dlocal_out);
    backend_.fill(dgate_rows, 0.0f);
    Tensor dgate = segment_of(dgate_rows, *segment);
    backend_.row_dot(dlocal_out, p.expert_out, dgate);
    backend_.gather_rows(dy, token_index, segment_of(p.row_gate, *segment), dlocal_out);
    p.expert_out = Tensor();
  } else {
    Tensor dy_rows = backend_.activation({rows, h});
    backend_.gather_rows(dy, p.token_index, Tensor(), dy_rows);
    backend_.row_dot(dy_rows, p.expert_out, dgate_rows);
    p.expert_out = Tensor();
    backend_.gather_rows(dy, p.token_index, p.row_gate, dy_rows);
    // The gradient of combine is dispatch.
    dlocal_out = exchange_.dispatch(p.plan, dy_rows);
  }

  const std::int64_t local_rows = p.local_in.dim(0), f = local_ffn();
  Tensor dlocal_in = backend_.activation({local_rows, h});
  {
    const TimedRegion timed(backend_, "moe experts backward");
    const std::vector<std::int64_t>& counts = p.plan.local_counts;
    backend_.grouped_matmul_weight_grad(dlocal_out, p.act, counts,
                                        expert_grads(&MlpWeights::down_proj));
    Tensor dact = p.act;  // the activation is no longer needed once its weight gradient is formed
    backend_.grouped_matmul(dlocal_out, expert_values(&MlpWeights::down_proj), counts, false, dact);
    Tensor dg = backend_.activation({local_rows, f}), du = backend_.activation({local_rows, f});
    backend_.swiglu_backward(dact, p.gate, p.up, dg, du);
    backend_.grouped_matmul(dg, expert_values(&MlpWeights::gate_proj), counts, false, dlocal_in);
    backend_.grouped_matmul(du, expert_values(&MlpWeights::up_proj), counts, false, dlocal_in, 1.0f,
                            1.0f);
    // The experts' column-parallel gate/up weight gradients, like the dense MLP's, wait for
    // the caller (their gradients stay alive through the combine until then).
    run_or_defer(later, [this, dg, du, counts, x = p.local_in] {
      backend_.grouped_matmul_weight_grad(dg, x, counts, expert_grads(&MlpWeights::gate_proj));
      backend_.grouped_matmul_weight_grad(du, x, counts, expert_grads(&MlpWeights::up_proj));
    });
  }
  p.gate = p.up = p.act = dlocal_out = Tensor();
  // The shared expert's input gradient (gated: through its gate's rows). Its weight gradients
  // are deferred only where it runs last: beside the combine they already overlap communication,
  // and deferring them there would keep its gate and up gradients alive through the combine.
  auto shared_input_grad = [&](DeferredWeightGrads* shared_later) {
    if (w_.shared_gate == nullptr) return shared_->backward(dy, shared_later);
    Tensor ds = backend_.activation({n, h});
    backend_.gather_rows(dy, p.shared_index, p.shared_gate, ds);
    return shared_->backward(ds, shared_later);
  };
  // The gradient of dispatch is combine (of this rank's segment alone where no rows move, as in
  // the forward); as in the forward, the shared expert's backward is queued while the rows move
  // when the exchange runs beside the compute.
  Tensor shared_dx, drows;
  if (exchange_.local_segment(p.plan)) {
    drows = std::move(dlocal_in);
  } else {
    const bool overlap = shared_ && exchange_.combines_in_background();
    ExpertExchange::PendingRows combining = exchange_.start_combine(p.plan, dlocal_in);
    dlocal_in = Tensor();
    if (overlap) shared_dx = shared_input_grad(nullptr);
    drows = combining.finish();
  }
  Tensor dx = backend_.activation({n, h});
  backend_.moe_combine(drows, p.token_index, Tensor(), p.slot_row, dx, p.first_row,
                       /*accumulate=*/false);
  drows = Tensor();

  // Router: gate gradients per (token, slot), zero for dropped slots, plus the balancing and
  // z losses.
  Tensor dlogits = backend_.empty({n, E});
  backend_.router_backward(p.logits, p.routing, spec_, dgate_rows, p.slot_row, loss_scale, dlogits);
  dlogits = as_activation(dlogits);
  backend_.matmul(dlogits, false, w_.router->value, false, dx, 1.0f, 1.0f);
  run_or_defer(later, [this, dlogits, x = p.x] {
    backend_.matmul(dlogits, true, x, false, w_.router->grad, 1.0f, 1.0f);
  });

  if (shared_) {
    if (w_.shared_gate != nullptr) {
      // y += sigmoid(x . w) * shared(x)
      Tensor dshared_gate = backend_.empty({n});
      backend_.row_dot(dy, p.shared_out, dshared_gate);
      Tensor dlogit = backend_.empty({n, 1});
      backend_.sigmoid_backward(dshared_gate, p.shared_gate, dlogit);
      dlogit = as_activation(dlogit);
      backend_.matmul(dlogit, false, w_.shared_gate->value, false, dx, 1.0f, 1.0f);
      run_or_defer(later, [this, dlogit, x = p.x] {
        backend_.matmul(dlogit, true, x, false, w_.shared_gate->grad, 1.0f, 1.0f);
      });
    }
    backend_.axpy(1.0f, shared_dx.defined() ? shared_dx : shared_input_grad(later), dx);
  }
  pending_.pop_front();
  return dx;
}

void MoeBlock::release() {
  pending_.clear();
  if (shared_) shared_->release();
}

void MoeBlock::update_balancing_bias(const std::vector<double>& load) {
  if (w_.score_bias == nullptr) return;
  MM_ASSERT(static_cast<std::int64_t>(load.size()) == config_.num_experts, "balancing load of ",
            load.size(), " experts for ", config_.num_experts);
  // A small host round trip once per optimizer step ([E] floats): the rule is host code.
  Parameter& bias = *w_.score_bias;
  Tensor host = backend_.to_host(score_bias(), DType::f32);
  metamorph::update_balancing_bias(host.data<float>(), load, config_.bias_update_rate);
  set_parameter_from_host(backend_, bias, host);
}

std::vector<const Tensor*> MoeBlock::expert_values(Parameter* MlpWeights::*projection) const {
  std::vector<const Tensor*> out;
  for (const MlpWeights& e : w_.experts) out.push_back(&(e.*projection)->value);
  return out;
}

std::vector<Tensor*> MoeBlock::expert_grads(Parameter* MlpWeights::*projection) const {
  std::vector<Tensor*> out;
  for (const MlpWeights& e : w_.experts) out.push_back(&(e.*projection)->grad);
  return out;
}

Tensor MoeBlock::score_bias() const {
  if (w_.score_bias == nullptr) return Tensor();
  const Parameter& bias = *w_.score_bias;
  return bias.master.defined() ? bias.master : bias.value;
}

Tensor MoeBlock::as_activation(const Tensor& t) {
  if (t.dtype() == backend_.activation_dtype()) return t;
  Tensor converted = backend_.activation(t.shape());
  backend_.copy(t, converted);
  return converted;
}

}  // namespace metamorph

#include "models/moe_block.hpp"

#include <cmath>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

Tensor iota(Backend& backend, std::int64_t n) {
  Tensor t = backend.empty({n}, DType::i32);
  auto* d = t.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<std::int32_t>(i);
  return t;
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
    : backend_(backend), config_(config), w_(std::move(weights)), exchange_(exchange) {
  MM_ASSERT(config_.enabled() && w_.router != nullptr, "MoeBlock without experts or router");
  MM_ASSERT(static_cast<std::int64_t>(w_.experts.size()) == exchange_.num_local_experts(),
            "MoeBlock: ", w_.experts.size(), " expert weights for ", exchange_.num_local_experts(),
            " local experts");
  require(config_.capacity_factor == 0 || exchange_.num_local_experts() == config_.num_experts,
          "MoE capacity_factor ", config_.capacity_factor,
          " under expert parallelism is not available yet (capacity needs the global per-expert ",
          "counts); use dropless routing (omit metamorph.capacity_factor) or --ep 1");
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
  p.logits = backend_.empty({n, E});
  backend_.matmul(x, false, w_.router->value, true, p.logits);
  const float* bias = w_.score_bias != nullptr ? w_.score_bias->value.data<float>() : nullptr;
  p.routing = route(p.logits.data<float>(), n, config_, bias);
  last_aux_ = p.routing.aux_loss;
  last_z_ = p.routing.z_loss;

  // Keep each expert's first `capacity` slots in token order; a stable counting sort by expert
  // then puts every expert's rows in one contiguous segment, in token order.
  const std::int64_t cap = capacity(n);
  const auto slots = static_cast<std::size_t>(n * k);
  std::vector<std::int64_t> kept(static_cast<std::size_t>(E), 0);
  std::vector<char> keep(slots, 0);
  std::int64_t dropped = 0;
  for (std::size_t i = 0; i < slots; ++i) {
    const auto e = static_cast<std::size_t>(p.routing.expert[i]);
    if (cap < 0 || kept[e] < cap) {
      keep[i] = 1;
      ++kept[e];
    } else {
      ++dropped;
    }
  }
  std::vector<std::int64_t> cursor(static_cast<std::size_t>(E), 0);
  std::int64_t rows = 0;
  for (std::size_t e = 0; e < kept.size(); ++e) {
    cursor[e] = rows;
    rows += kept[e];
  }
  p.token_index = backend_.empty({rows}, DType::i32);
  p.row_gate = backend_.empty({rows});
  p.row_slot.resize(static_cast<std::size_t>(rows));
  auto* token_of = p.token_index.data<std::int32_t>();
  auto* gate_of = p.row_gate.data<float>();
  for (std::size_t i = 0; i < slots; ++i) {
    if (!keep[i]) continue;
    const auto r =
        static_cast<std::size_t>(cursor[static_cast<std::size_t>(p.routing.expert[i])]++);
    token_of[r] = static_cast<std::int32_t>(i / static_cast<std::size_t>(k));
    gate_of[r] = p.routing.gate[i];
    p.row_slot[r] = static_cast<std::int64_t>(i);
  }
  if (record_stats) {
    for (std::size_t e = 0; e < kept.size(); ++e)
      stats_.expert_tokens[e] += static_cast<double>(p.routing.counts[e]);
    stats_.aux_loss += p.routing.aux_loss;
    stats_.z_loss += p.routing.z_loss;
    stats_.entropy += p.routing.entropy;
    ++stats_.forwards;
    stats_.slots += static_cast<std::int64_t>(slots);
    stats_.dropped += dropped;
  }

  Tensor routed = backend_.empty({rows, h});
  backend_.gather_rows(x, p.token_index, Tensor(), routed);
  p.plan = exchange_.plan(kept);
  p.local_in = exchange_.dispatch(p.plan, routed);
  routed = Tensor();
  const std::int64_t local_rows = p.local_in.dim(0), f = local_ffn();
  p.gate = backend_.empty({local_rows, f});
  p.up = backend_.empty({local_rows, f});
  p.act = backend_.empty({local_rows, f});
  Tensor local_out = backend_.empty({local_rows, h});
  std::int64_t at = 0;
  for (std::size_t i = 0; i < w_.experts.size(); ++i) {
    const std::int64_t count = p.plan.local_counts[i];
    if (count == 0) continue;
    const MlpWeights& ew = w_.experts[i];
    const Tensor in = p.local_in.slice(at, at + count);
    Tensor gate = p.gate.slice(at, at + count), up = p.up.slice(at, at + count),
           act = p.act.slice(at, at + count), out = local_out.slice(at, at + count);
    backend_.matmul(in, false, ew.gate_proj->value, true, gate);
    backend_.matmul(in, false, ew.up_proj->value, true, up);
    backend_.swiglu_forward(gate, up, act);
    backend_.matmul(act, false, ew.down_proj->value, true, out);
    at += count;
  }
  MM_ASSERT(at == local_rows, "expert segments cover ", at, " of ", local_rows, " rows");
  p.expert_out = exchange_.combine(p.plan, local_out);
  local_out = Tensor();
  Tensor y = backend_.zeros({n, h});
  backend_.scatter_add_rows(p.expert_out, p.token_index, p.row_gate, y);

  if (shared_) {
    Tensor s = shared_->forward(x);
    if (w_.shared_gate != nullptr) {
      Tensor logit = backend_.empty({n, 1});
      backend_.matmul(x, false, w_.shared_gate->value, true, logit);
      p.shared_gate = backend_.empty({n});
      const float* l = logit.data<float>();
      float* g = p.shared_gate.data<float>();
      for (std::int64_t t = 0; t < n; ++t)
        g[t] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(l[t]))));
      backend_.scatter_add_rows(s, iota(backend_, n), p.shared_gate, y);
      p.shared_out = s;
    } else {
      backend_.axpy(1.0f, s, y);
    }
  }
  pending_.push_back(std::move(p));
  return y;
}

Tensor MoeBlock::backward(const Tensor& dy, float loss_scale) {
  MM_ASSERT(!pending_.empty(), "MoeBlock::backward without forward");
  Pending& p = pending_.front();
  const std::int64_t n = p.x.dim(0), h = p.x.dim(1), E = config_.num_experts, k = config_.top_k;
  const std::int64_t rows = p.token_index.numel();

  // Gate gradients: dgate = dy[token] . expert_out; the experts' output gradient is gate * dy.
  Tensor dy_rows = backend_.empty({rows, h});
  backend_.gather_rows(dy, p.token_index, Tensor(), dy_rows);
  Tensor dgate_rows = backend_.empty({rows});
  backend_.row_dot(dy_rows, p.expert_out, dgate_rows);
  p.expert_out = Tensor();
  backend_.gather_rows(dy, p.token_index, p.row_gate, dy_rows);
  // The gradient of combine is dispatch.
  Tensor dlocal_out = exchange_.dispatch(p.plan, dy_rows);
  dy_rows = Tensor();

  const std::int64_t local_rows = p.local_in.dim(0), f = local_ffn();
  Tensor dlocal_in = backend_.empty({local_rows, h});
  {
    Tensor dgate_buf = backend_.empty({local_rows, f}), dup_buf = backend_.empty({local_rows, f});
    std::int64_t at = 0;
    for (std::size_t i = 0; i < w_.experts.size(); ++i) {
      const std::int64_t count = p.plan.local_counts[i];
      if (count == 0) continue;
      const MlpWeights& ew = w_.experts[i];
      const Tensor in = p.local_in.slice(at, at + count), dout = dlocal_out.slice(at, at + count);
      const Tensor gate = p.gate.slice(at, at + count), up = p.up.slice(at, at + count);
      Tensor act = p.act.slice(at, at + count);
      backend_.matmul(dout, true, act, false, ew.down_proj->grad, 1.0f, 1.0f);
      Tensor dact = act;  // the activation is no longer needed once its weight gradient is formed
      backend_.matmul(dout, false, ew.down_proj->value, false, dact);
      Tensor dg = dgate_buf.slice(at, at + count), du = dup_buf.slice(at, at + count);
      backend_.swiglu_backward(dact, gate, up, dg, du);
      backend_.matmul(dg, true, in, false, ew.gate_proj->grad, 1.0f, 1.0f);
      backend_.matmul(du, true, in, false, ew.up_proj->grad, 1.0f, 1.0f);
      Tensor din = dlocal_in.slice(at, at + count);
      backend_.matmul(dg, false, ew.gate_proj->value, false, din);
      backend_.matmul(du, false, ew.up_proj->value, false, din, 1.0f, 1.0f);
      at += count;
    }
  }
  p.gate = p.up = p.act = dlocal_out = Tensor();
  // The gradient of dispatch is combine.
  Tensor drows = exchange_.combine(p.plan, dlocal_in);
  dlocal_in = Tensor();
  Tensor dx = backend_.zeros({n, h});
  backend_.scatter_add_rows(drows, p.token_index, Tensor(), dx);
  drows = Tensor();

  // Router: gate gradients per (token, slot), zero for dropped slots, plus the balancing and
  // z losses.
  std::vector<float> dgate(static_cast<std::size_t>(n * k), 0.0f);
  const float* dg = dgate_rows.data<float>();
  for (std::size_t r = 0; r < p.row_slot.size(); ++r)
    dgate[static_cast<std::size_t>(p.row_slot[r])] = dg[r];
  Tensor dlogits = backend_.empty({n, E});
  route_backward(p.routing, p.logits.data<float>(), config_, dgate.data(), loss_scale,
                 dlogits.data<float>());
  backend_.matmul(dlogits, true, p.x, false, w_.router->grad, 1.0f, 1.0f);
  backend_.matmul(dlogits, false, w_.router->value, false, dx, 1.0f, 1.0f);

  if (shared_) {
    if (w_.shared_gate != nullptr) {
      // y += sigmoid(x . w) * shared(x)
      Tensor dshared_gate = backend_.empty({n});
      backend_.row_dot(dy, p.shared_out, dshared_gate);
      Tensor dlogit = backend_.empty({n, 1});
      const float* g = p.shared_gate.data<float>();
      const float* d = dshared_gate.data<float>();
      float* dl = dlogit.data<float>();
      for (std::int64_t t = 0; t < n; ++t) dl[t] = d[t] * g[t] * (1.0f - g[t]);
      backend_.matmul(dlogit, true, p.x, false, w_.shared_gate->grad, 1.0f, 1.0f);
      backend_.matmul(dlogit, false, w_.shared_gate->value, false, dx, 1.0f, 1.0f);
      Tensor ds = backend_.empty({n, h});
      backend_.gather_rows(dy, iota(backend_, n), p.shared_gate, ds);
      backend_.axpy(1.0f, shared_->backward(ds), dx);
    } else {
      backend_.axpy(1.0f, shared_->backward(dy), dx);
    }
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
  metamorph::update_balancing_bias(w_.score_bias->value.data<float>(), load,
                                   config_.bias_update_rate);
}

}  // namespace metamorph

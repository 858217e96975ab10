#include "runtime/transforms/upcycle.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "models/init.hpp"
#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"
#include "runtime/transforms/source_checkpoint.hpp"

namespace metamorph {

namespace {

// Mean and standard deviation of a tensor's elements (Drop-Upcycling re-draws from these).
struct Moments {
  double mean = 0, std = 0;
};

Moments moments_of(const Tensor& t) {
  const float* v = t.data<float>();
  const std::int64_t n = t.numel();
  double sum = 0, squares = 0;
  for (std::int64_t i = 0; i < n; ++i) sum += v[i];
  const double mean = sum / static_cast<double>(n);
  for (std::int64_t i = 0; i < n; ++i) squares += (v[i] - mean) * (v[i] - mean);
  return {mean, std::sqrt(squares / static_cast<double>(n))};
}

class Upcycler {
 public:
  Upcycler(Backend& backend, const ModelConfig& dense, const ParameterSet& source,
           const UpcycleOptions& options)
      : backend_(backend),
        source_(source),
        options_(options),
        to_(upcycled_config(dense, options)) {
    check_whole_source(backend, dense, source, "upcycle");
    const bool shared = options.shared_experts > 0;
    const double shared_part = shared ? options.shared_fraction : 0.0;
    // Routed gates sum to 1 over the chosen experts; a fine-grained expert is one of G segments
    // that together make the FFN, each chosen with gate 1/(kG) in the balanced case, so its
    // output is scaled by G (see docs/transforms.md).
    routed_scale_ =
        static_cast<float>(static_cast<double>(options.granularity) * (1 - shared_part));
    // N side-by-side copies sum to N times the FFN; the sigmoid gate starts at 1/2.
    if (shared)
      shared_scale_ = static_cast<float>(shared_part / static_cast<double>(options.shared_experts) *
                                         (options.shared_expert_gate ? 2.0 : 1.0));
  }

  ParameterSet run() {
    ParameterSet out = make_parameters(backend_, to_);
    for (auto& p : out.all()) {
      const Parameter* s = source_.find(p.name);
      if (s == nullptr) continue;  // an MoE parameter, filled below
      MM_ASSERT(s->value.numel() == p.value.numel(), p.name);
      std::memcpy(p.value.raw(), s->value.raw(), p.value.bytes());
    }
    for (std::int64_t l = 0; l < to_.num_layers; ++l)
      if (to_.is_moe_layer(l)) upcycle_layer(out, l);
    return out;
  }

 private:
  Parameter& target(ParameterSet& out, const std::string& name) const {
    Parameter* p = out.find(name);
    MM_ASSERT(p != nullptr, name);
    return *p;
  }

  const Tensor& dense_tensor(const std::string& name) const {
    const Parameter* p = source_.find(name);
    MM_ASSERT(p != nullptr, name);
    return p->value;
  }

  // Rows [first, first + rows) of the dense [f, h] gate/up weight, taken modulo f so that a
  // shared expert of N f rows holds N copies.
  static void copy_rows(Tensor& dst, const Tensor& src, std::int64_t first) {
    const std::int64_t rows = dst.dim(0), cols = dst.dim(1), f = src.dim(0);
    for (std::int64_t r = 0; r < rows; ++r)
      std::memcpy(dst.data<float>() + r * cols, src.data<float>() + ((first + r) % f) * cols,
                  static_cast<std::size_t>(cols) * sizeof(float));
  }

  // Columns [first, first + cols) (modulo f) of the dense [h, f] down weight, times `scale`.
  static void copy_columns(Tensor& dst, const Tensor& src, std::int64_t first, float scale) {
    const std::int64_t rows = dst.dim(0), cols = dst.dim(1), f = src.dim(1);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        dst.data<float>()[r * cols + c] = src.data<float>()[r * f + (first + c) % f] * scale;
  }

  void upcycle_layer(ParameterSet& out, std::int64_t layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    const MoeConfig& m = to_.moe;
    const Tensor& gate = dense_tensor(p + "mlp.gate_proj.weight");
    const Tensor& up = dense_tensor(p + "mlp.up_proj.weight");
    const Tensor& down = dense_tensor(p + "mlp.down_proj.weight");

    fill_router(target(out, p + "mlp.gate.weight"));
    if (m.scoring == RouterScoring::sigmoid_bias)
      backend_.fill(target(out, p + "mlp.gate.e_score_correction_bias").value, 0.0f);

    const std::int64_t f_e = m.expert_intermediate_size;
    for (std::int64_t e = 0; e < m.num_experts; ++e) {
      // Expert e is segment e mod G of copy e / G: intermediate units [s f_e, (s+1) f_e).
      const std::int64_t first = (e % options_.granularity) * f_e;
      const std::string ep = expert_prefix(layer, e);
      Parameter& eg = target(out, ep + "gate_proj.weight");
      Parameter& eu = target(out, ep + "up_proj.weight");
      Parameter& ed = target(out, ep + "down_proj.weight");
      copy_rows(eg.value, gate, first);
      copy_rows(eu.value, up, first);
      copy_columns(ed.value, down, first, routed_scale_);
      if (options_.drop_fraction > 0) redraw_units(ep, eg, eu, ed, gate, up, down);
      if (options_.noise > 0)
        for (Parameter* w : {&eg, &eu, &ed}) add_noise(*w);
    }
    if (m.shared_expert_intermediate_size > 0) {
      copy_rows(target(out, p + "mlp.shared_expert.gate_proj.weight").value, gate, 0);
      copy_rows(target(out, p + "mlp.shared_expert.up_proj.weight").value, up, 0);
      copy_columns(target(out, p + "mlp.shared_expert.down_proj.weight").value, down, 0,
                   shared_scale_);
      // sigmoid(0) = 1/2 for every token: a constant gate, absorbed by shared_scale_.
      if (m.shared_expert_gate)
        backend_.fill(target(out, p + "mlp.shared_expert_gate.weight").value, 0.0f);
    }
  }

  // N(0, router_std) rows keyed by the parameter's name; with shared segment routers expert e
  // takes the row of its copy e / G, so the G segments of a copy score alike (ties go to the
  // lower expert id) and a token is routed to whole copies.
  void fill_router(Parameter& router) const {
    const std::int64_t experts = router.value.dim(0), h = router.value.dim(1);
    const std::int64_t group = options_.independent_segment_routers ? 1 : options_.granularity;
    const rng::Stream stream(options_.seed, router.name);
    float* v = router.value.data<float>();
    for (std::int64_t e = 0; e < experts; ++e)
      for (std::int64_t c = 0; c < h; ++c)
        v[e * h + c] = options_.router_std == 0
                           ? 0.0f
                           : static_cast<float>(
                                 options_.router_std *
                                 stream.normal(static_cast<std::uint64_t>((e / group) * h + c)));
  }

  // Drop-Upcycling: a random subset of round(p f_e) intermediate units of this expert (rows of
  // gate/up, columns of down) re-drawn from N(mean, std) of the dense weight, so each expert
  // keeps most of the dense FFN's knowledge but differs from its siblings from the start.
  void redraw_units(const std::string& expert, Parameter& gate, Parameter& up, Parameter& down,
                    const Tensor& dense_gate, const Tensor& dense_up,
                    const Tensor& dense_down) const {
    const std::int64_t f_e = gate.value.dim(0), h = gate.value.dim(1);
    const auto dropped =
        static_cast<std::int64_t>(std::llround(options_.drop_fraction * static_cast<double>(f_e)));
    if (dropped == 0) return;
    const rng::Stream pick(options_.seed, "upcycle.drop." + expert);
    std::vector<std::int64_t> units(static_cast<std::size_t>(f_e));
    std::iota(units.begin(), units.end(), 0);
    std::vector<std::uint32_t> key(units.size());
    for (std::size_t i = 0; i < key.size(); ++i) key[i] = pick.bits(i)[0];
    std::stable_sort(units.begin(), units.end(), [&](std::int64_t a, std::int64_t b) {
      return key[static_cast<std::size_t>(a)] < key[static_cast<std::size_t>(b)];
    });
    units.resize(static_cast<std::size_t>(dropped));

    for (auto [w, dense] : {std::pair{&gate, &dense_gate}, std::pair{&up, &dense_up}}) {
      const Moments mo = moments_of(*dense);
      const rng::Stream draw(options_.seed, "upcycle.redraw." + w->name);
      float* v = w->value.data<float>();
      for (const std::int64_t u : units)
        for (std::int64_t c = 0; c < h; ++c)
          v[u * h + c] = static_cast<float>(
              mo.mean + mo.std * draw.normal(static_cast<std::uint64_t>(u * h + c)));
    }
    const Moments mo = moments_of(dense_down);
    const rng::Stream draw(options_.seed, "upcycle.redraw." + down.name);
    float* v = down.value.data<float>();
    for (std::int64_t r = 0; r < h; ++r)
      for (const std::int64_t u : units)
        v[r * f_e + u] = static_cast<float>(
            (mo.mean + mo.std * draw.normal(static_cast<std::uint64_t>(r * f_e + u))) *
            routed_scale_);
  }

  // N(0, (noise * rms(w))^2) on every element, seeded by the parameter's name.
  void add_noise(Parameter& w) const {
    const double rms =
        std::sqrt(backend_.sum_squares(w.value) / static_cast<double>(w.value.numel()));
    if (rms == 0) return;
    const auto std = static_cast<float>(options_.noise * rms);
    const rng::Stream noise(options_.seed, "upcycle.noise." + w.name);
    float* v = w.value.data<float>();
    for (std::int64_t i = 0; i < w.value.numel(); ++i)
      v[i] += std * noise.normal(static_cast<std::uint64_t>(i));
  }

  Backend& backend_;
  const ParameterSet& source_;
  const UpcycleOptions& options_;
  ModelConfig to_;
  float routed_scale_ = 1, shared_scale_ = 0;
};

}  // namespace

ParameterSet upcycle_parameters(Backend& backend, const ModelConfig& dense,
                                const ParameterSet& source, const UpcycleOptions& options) {
  return Upcycler(backend, dense, source, options).run();
}

}  // namespace metamorph

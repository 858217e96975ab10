// `metamorph bench train-step`: times optimizer steps of a model on random tokens on this
// machine's CPU backend and reports tokens/s and the arena's peak next to the analytic count.
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "launch/cli/command.hpp"
#include "launch/commands/bench_calibrate.hpp"
#include "models/init.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "runtime/train/random_rows.hpp"
#include "runtime/train/trainer.hpp"

namespace metamorph::cli {

namespace {

// What one training step keeps alive at its peak, counted from what the layers save (fp32):
// per layer and token, the block input, the attention input, the residual after attention and
// the MLP input (h each), q, k, v and the attention output, its log-sum-exp (one float per
// head), the two RMSNorm statistics and gate/up/activation (f each); then the final norm's
// input and output, the logits and their log-sum-exp for one micro-batch. Parameters cost 16
// bytes each: weight, gradient, AdamW m and v.
// An MoE layer (docs/moe.md) keeps instead of gate/up/activation: the router logits (E), per
// routed row (k per token, dropless) its input and output (h each), gate/up/activation (f_e
// each), its token index and gate; the shared expert's gate/up/activation (f_s each) and, when
// gated, its output and gate.
nlohmann::json analytic_bytes(const ModelConfig& c, std::int64_t micro_batch, std::int64_t seq,
                              bool recompute) {
  const std::int64_t t = micro_batch * seq, h = c.hidden_size;
  const std::int64_t attention_part = 4 * h + c.q_size() * 2 + 2 * c.kv_size() + c.num_heads + 2;
  const MoeConfig& m = c.moe;
  std::int64_t saved_layers = 0, largest = 0;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    std::int64_t per_token = attention_part + 3 * c.intermediate_size;
    if (c.is_moe_layer(l)) {
      const std::int64_t fs = m.shared_expert_intermediate_size;
      per_token = attention_part + m.num_experts +
                  m.top_k * (2 * h + 3 * m.expert_intermediate_size + 2) + 3 * fs +
                  (m.shared_expert_gate ? h + 1 : 0);
    }
    saved_layers += recompute ? t * h : t * per_token;
    largest = std::max(largest, per_token);
  }
  if (recompute) saved_layers += t * largest;
  const std::int64_t head = t * (2 * h + c.vocab_size + 1);
  const std::int64_t n = parameter_count(c);
  return {{"weights", 4 * n},
          {"grads", 4 * n},
          {"optimizer", 8 * n},
          {"activations", 4 * (saved_layers + head)},
          {"total", 16 * n + 4 * (saved_layers + head)}};
}

int bench_train_step(const po::variables_map& vm) {
  require(vm.count("model"), "bench train-step: --model is required");
  const ModelConfig config = load_model_config(vm["model"].as<std::string>());
  const auto seq = vm["seq"].as<std::int64_t>();
  const auto micro = vm["micro-batch"].as<std::int64_t>();
  const auto global = vm["global-batch"].as<std::int64_t>();
  const auto steps = vm["steps"].as<std::int64_t>();
  require(seq > 0 && micro > 0 && global > 0 && steps > 0,
          "bench train-step: --seq, --micro-batch, --global-batch and --steps must be positive");
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 1);
  TransformerOptions model_options;
  model_options.recompute = vm["recompute"].as<bool>();
  Transformer model(cpu, config, params, model_options);
  AdamW optimizer(cpu, params, AdamWOptions{});
  TrainOptions options;
  options.steps = steps + 2;
  options.micro_batch = micro;
  options.global_batch = global;
  options.lr = LrSchedule{1e-4, 1e-5, 0, options.steps};
  RandomRows data(seq, config.vocab_size, 1);
  Trainer trainer(cpu, model, optimizer, options, data, nullptr);
  std::vector<double> rates;
  std::size_t peak = 0;
  for (std::int64_t s = 0; s < options.steps; ++s) {
    const StepMetrics m = trainer.step();
    if (s >= 2) rates.push_back(m.tokens_per_s);  // two warm-up steps
    peak = std::max(peak, m.peak_bytes);
  }
  std::sort(rates.begin(), rates.end());
  const std::int64_t n = parameter_count(config);
  nlohmann::json out = {
      {"tokens_per_s", rates[rates.size() / 2]},
      {"params", n},
      {"peak_bytes", peak},
      {"analytic_bytes", analytic_bytes(config, micro, seq, model_options.recompute)}};
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace

Command bench_command() {
  return {"bench",
          "measure this machine: `bench train-step` times training steps of --model on random "
          "tokens; `bench calibrate --out calibration.json` measures GEMMs, memory and (under "
          "mpirun) collectives for `plan --calibration`",
          [] {
            po::options_description o;
            o.add_options()(
                "what", po::value<std::string>()->default_value("train-step"),
                "what to measure: train-step | calibrate (writes --out calibration.json for plan)")(
                "model", po::value<std::string>(), "model config (HF config.json fields)")(
                "seq", po::value<std::int64_t>()->default_value(256), "sequence length")(
                "micro-batch", po::value<std::int64_t>()->default_value(4),
                "sequences per micro-batch")(
                "global-batch", po::value<std::int64_t>()->default_value(8), "sequences per step")(
                "steps", po::value<std::int64_t>()->default_value(10),
                "timed steps (after 2 warm-up)")("recompute", po::bool_switch(),
                                                 "full activation recompute")(
                "out", po::value<std::string>(), "calibrate: where to write calibration.json")(
                "repeats", po::value<int>()->default_value(5), "calibrate: timed calls per sample")(
                "largest", po::value<std::int64_t>()->default_value(1024),
                "calibrate: the largest square GEMM")(
                "gemm-model", po::value<std::vector<std::string>>()->composing(),
                "calibrate: more model configs whose GEMMs (projections; experts of an MoE) are "
                "measured too, at the same tokens (repeatable)")(
                "device", po::value<std::string>()->default_value("cpu"),
                "calibrate: cpu | cuda (this rank's GPU in bf16; collectives over NCCL)");
            return o;
          },
          {"what"},
          [](const po::variables_map& vm) {
            const auto what = vm["what"].as<std::string>();
            if (what == "train-step") return bench_train_step(vm);
            if (what == "calibrate") return bench_calibrate(vm);
            throw InputError(
                concat("bench: unknown measurement '", what, "'; valid: train-step, calibrate"));
          }};
}

}  // namespace metamorph::cli

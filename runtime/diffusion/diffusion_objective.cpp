#include "runtime/diffusion/diffusion_objective.hpp"

namespace metamorph::diffusion {

DiffusionObjective::DiffusionObjective(Backend& backend, Transformer& model,
                                       DiffusionOptions options)
    : backend_(backend), model_(model), options_(options) {
  validate(options_, model_.config().vocab_size);
}

ModelPass DiffusionObjective::ar_pass(const std::int32_t* clean, std::int64_t rows,
                                      std::int64_t n) {
  // Filled on the host, then moved to the backend's device (the identity on the CPU).
  ModelPass pass;
  pass.tokens = backend_.host_empty({rows, n}, DType::i32);
  pass.targets = backend_.host_empty({rows, n}, DType::i32);
  pass.weights = backend_.host_empty({rows, n}, DType::f32);
  pass.positions = backend_.host_empty({n}, DType::i32);
  pass.mask = AttentionMask{MaskKind::causal};
  auto* tok = pass.tokens.data<std::int32_t>();
  auto* tgt = pass.targets.data<std::int32_t>();
  float* w = pass.weights.data<float>();
  for (std::int64_t i = 0; i < n; ++i)
    pass.positions.data<std::int32_t>()[i] = static_cast<std::int32_t>(i);
  const auto weight = static_cast<float>(options_.ar_weight);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < n; ++i) {
      const bool last = i + 1 == n;
      tok[r * n + i] = clean[r * n + i];
      tgt[r * n + i] = last ? model_.options().ignore_index : clean[r * n + i + 1];
      w[r * n + i] = last ? 0.0f : weight;
    }
  pass.tokens = backend_.from_host(pass.tokens, DType::i32);
  pass.targets = backend_.from_host(pass.targets, DType::i32);
  pass.weights = backend_.from_host(pass.weights, DType::f32);
  pass.positions = backend_.from_host(pass.positions, DType::i32);
  return pass;
}

std::vector<ModelPass> DiffusionObjective::passes(const std::int32_t* clean, std::int64_t rows,
                                                  std::int64_t n, const SampleRange& samples) {
  DiffusionBatch b =
      build_diffusion_batch(backend_, options_, clean, rows, n, samples.step, samples.first_sample,
                            samples.global_batch, model_.options().ignore_index);
  std::vector<ModelPass> out;
  out.push_back({std::move(b.tokens), std::move(b.positions), b.mask, std::move(b.targets),
                 std::move(b.weights)});
  if (options_.ar_weight > 0.0) out.push_back(ar_pass(clean, rows, n));
  return out;
}

LossSum DiffusionObjective::forward_backward(const std::int32_t* clean, std::int64_t rows,
                                             std::int64_t n, const SampleRange& samples,
                                             float grad_scale) {
  LossSum total;
  for (const ModelPass& p : passes(clean, rows, n, samples))
    total.sum +=
        model_.forward_backward(p.tokens, p.positions, p.targets, p.mask, grad_scale, p.weights)
            .sum;
  total.tokens = rows * n;
  return total;
}

LossSum DiffusionObjective::loss(const std::int32_t* clean, std::int64_t rows, std::int64_t n,
                                 const SampleRange& samples) {
  LossSum total;
  for (const ModelPass& p : passes(clean, rows, n, samples))
    total.sum += model_.loss(p.tokens, p.positions, p.targets, p.mask, p.weights).sum;
  total.tokens = rows * n;
  return total;
}

}  // namespace metamorph::diffusion

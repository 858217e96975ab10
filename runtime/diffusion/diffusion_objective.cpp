#include "runtime/diffusion/diffusion_objective.hpp"

namespace metamorph::diffusion {

DiffusionObjective::DiffusionObjective(Backend& backend, Transformer& model,
                                       DiffusionOptions options)
    : backend_(backend), model_(model), options_(options) {
  validate(options_, model_.config().vocab_size);
}

DiffusionBatch DiffusionObjective::batch(const std::int32_t* clean, std::int64_t rows,
                                         std::int64_t n, const SampleRange& samples) {
  return build_diffusion_batch(backend_, options_, clean, rows, n, samples.step,
                               samples.first_sample, samples.global_batch,
                               model_.options().ignore_index);
}

void DiffusionObjective::ar_rows(const std::int32_t* clean, std::int64_t rows, std::int64_t n,
                                 Tensor& tokens, Tensor& targets) {
  tokens = backend_.empty({rows, n}, DType::i32);
  targets = backend_.empty({rows, n}, DType::i32);
  auto* tok = tokens.data<std::int32_t>();
  auto* tgt = targets.data<std::int32_t>();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < n; ++i) {
      tok[r * n + i] = clean[r * n + i];
      tgt[r * n + i] = i + 1 < n ? clean[r * n + i + 1] : model_.options().ignore_index;
    }
}

LossSum DiffusionObjective::forward_backward(const std::int32_t* clean, std::int64_t rows,
                                             std::int64_t n, const SampleRange& samples,
                                             float grad_scale) {
  const DiffusionBatch b = batch(clean, rows, n, samples);
  LossSum total =
      model_.forward_backward(b.tokens, b.positions, b.targets, b.mask, grad_scale, b.weights);
  total.tokens = b.loss_tokens;
  if (options_.ar_weight > 0.0) {
    Tensor tokens, targets;
    ar_rows(clean, rows, n, tokens, targets);
    const auto w = static_cast<float>(options_.ar_weight);
    const LossSum ar = model_.forward_backward(tokens, targets, grad_scale * w);
    total.sum += options_.ar_weight * ar.sum;
  }
  return total;
}

LossSum DiffusionObjective::loss(const std::int32_t* clean, std::int64_t rows, std::int64_t n,
                                 const SampleRange& samples) {
  const DiffusionBatch b = batch(clean, rows, n, samples);
  LossSum total = model_.loss(b.tokens, b.positions, b.targets, b.mask, b.weights);
  total.tokens = b.loss_tokens;
  if (options_.ar_weight > 0.0) {
    Tensor tokens, targets;
    ar_rows(clean, rows, n, tokens, targets);
    total.sum += options_.ar_weight * model_.loss(tokens, targets).sum;
  }
  return total;
}

}  // namespace metamorph::diffusion

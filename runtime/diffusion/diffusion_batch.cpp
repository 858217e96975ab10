#include "runtime/diffusion/diffusion_batch.hpp"

#include <cmath>

#include "runtime/core/error.hpp"

namespace metamorph::diffusion {

void validate(const DiffusionOptions& options, std::int64_t vocab_size) {
  require(options.block_size >= 1 && options.block_size <= 64, "--block-size ", options.block_size,
          " must be between 1 and 64");
  require(options.mask_token >= 0 && options.mask_token < vocab_size, "[MASK] token id ",
          options.mask_token, " is outside the vocabulary [0, ", vocab_size,
          "); grow the embedding by one row first");
  require(std::isfinite(options.ar_weight) && options.ar_weight >= 0.0, "--ar-weight ",
          options.ar_weight, " must be a finite number >= 0");
  validate(options.masking);
  validate(options.noise);
}

DiffusionBatch build_diffusion_batch(Backend& backend, const DiffusionOptions& options,
                                     const std::int32_t* clean, std::int64_t rows, std::int64_t n,
                                     std::int64_t step, std::int64_t first_sample,
                                     std::int64_t global_batch, std::int32_t ignore_index) {
  const std::int64_t block = options.block_size, width = 2 * n;
  const NoiseSampler sampler(options.seed, step, options.noise, options.masking, n, block,
                             global_batch);
  require(first_sample >= 0 && first_sample + rows <= global_batch, "samples [", first_sample, ", ",
          first_sample + rows, ") are outside the global batch of ", global_batch);
  // Drawn and filled on the host, then moved to the backend's device (the identity on the CPU,
  // so a CPU run's tensors and arena peak are what they were; on a GPU the masks are the same
  // draws as on the CPU).
  DiffusionBatch b;
  b.tokens = backend.host_empty({rows, width}, DType::i32);
  b.targets = backend.host_empty({rows, width}, DType::i32);
  b.weights = backend.host_empty({rows, width}, DType::f32);
  b.positions = backend.host_empty({width}, DType::i32);
  b.mask = AttentionMask{MaskKind::block_diffusion, block, n};
  b.loss_tokens = rows * n;
  auto* pos = b.positions.data<std::int32_t>();
  for (std::int64_t i = 0; i < width; ++i) pos[i] = static_cast<std::int32_t>(i % n);

  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* x0 = clean + r * n;
    auto* tok = b.tokens.data<std::int32_t>() + r * width;
    auto* tgt = b.targets.data<std::int32_t>() + r * width;
    float* w = b.weights.data<float>() + r * width;
    const SequenceNoise noise = sampler.draw(first_sample + r);
    for (std::int64_t i = 0; i < width; ++i) {
      tgt[i] = ignore_index;
      w[i] = 0.0f;
    }
    for (std::int64_t i = 0; i < n; ++i) {
      const bool masked = noise.masked[static_cast<std::size_t>(i)];
      tok[i] = masked ? options.mask_token : x0[i];
      tok[n + i] = x0[i];
      b.masked += masked;
      if (!masked) continue;
      const auto weight = static_cast<float>(1.0 / noise.t[static_cast<std::size_t>(i)]);
      std::int64_t row = i;  // the row whose output predicts token i
      if (options.logit_shift) {
        if (i == 0) continue;
        row = i % block == 0 ? n + i - 1 : i - 1;
      }
      tgt[row] = x0[i];
      w[row] = weight;
    }
  }
  b.tokens = backend.from_host(b.tokens, DType::i32);
  b.targets = backend.from_host(b.targets, DType::i32);
  b.weights = backend.from_host(b.weights, DType::f32);
  b.positions = backend.from_host(b.positions, DType::i32);
  return b;
}

}  // namespace metamorph::diffusion

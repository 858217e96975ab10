#include "runtime/decode/ar_decoder.hpp"

#include <chrono>

#include "runtime/core/error.hpp"

namespace metamorph::decode {

void check_prompt(const ModelConfig& config, std::int64_t prompt_tokens,
                  std::int64_t max_new_tokens) {
  require(prompt_tokens > 0, "the prompt is empty; give --prompt some text");
  require(max_new_tokens > 0, "--max-tokens ", max_new_tokens, " must be positive");
  require(prompt_tokens + max_new_tokens <= config.max_position_embeddings, "the prompt (",
          prompt_tokens, " tokens) plus --max-tokens ", max_new_tokens,
          " exceeds the model's context of ", config.max_position_embeddings, " tokens");
}

namespace {
// Written on the host, then moved to the backend's device (the identity on the CPU).
Tensor ids_tensor(Backend& backend, const std::int32_t* ids, std::int64_t count,
                  std::int64_t first_position, Tensor& positions) {
  Tensor t = backend.host_empty({1, count}, DType::i32);
  positions = backend.host_empty({count}, DType::i32);
  for (std::int64_t i = 0; i < count; ++i) {
    t.data<std::int32_t>()[i] = ids[i];
    positions.data<std::int32_t>()[i] = static_cast<std::int32_t>(first_position + i);
  }
  positions = backend.from_host(positions, DType::i32);
  return backend.from_host(t, DType::i32);
}
}  // namespace

Generation generate_ar(Transformer& model, const std::vector<std::int32_t>& prompt,
                       std::int64_t max_new_tokens, const ArDecodeOptions& options,
                       const StepObserver& observer) {
  const ModelConfig& config = model.config();
  check_prompt(config, static_cast<std::int64_t>(prompt.size()), max_new_tokens);
  validate(options.sampling);
  Backend& backend = model.backend();
  const auto start = std::chrono::steady_clock::now();
  const double cpu_start = process_cpu_seconds();
  std::vector<std::int32_t> context = prompt;
  Generation out;
  KvCache cache;
  if (options.use_cache)
    cache = model.make_kv_cache(static_cast<std::int64_t>(prompt.size()) + max_new_tokens);
  const AttentionMask causal{MaskKind::causal, 1, 0};
  for (std::int64_t step = 0; step < max_new_tokens; ++step) {
    Tensor logits, positions;
    if (options.use_cache) {
      // The cache holds every context token but the newest ones: the prompt at step 0, then
      // the token generated last.
      const std::int64_t first = cache.length;
      const auto count = static_cast<std::int64_t>(context.size()) - first;
      const Tensor ids = ids_tensor(backend, context.data() + first, count, first, positions);
      logits = model.logits_cached(ids, positions, causal, cache, count, count - 1);
    } else {
      const auto count = static_cast<std::int64_t>(context.size());
      const Tensor ids = ids_tensor(backend, context.data(), count, 0, positions);
      logits = model.logits(ids, positions, causal);
    }
    ++out.forward_passes;
    // The sampler reads the row on the host: f32, downloaded from a GPU (the identity on the
    // CPU).
    const Tensor last = backend.to_host(logits.slice(logits.dim(0) - 1, logits.dim(0)), DType::f32);
    if (observer) observer(static_cast<std::int64_t>(context.size()), last);
    const Choice c = choose_token(last.data<float>(), config.vocab_size, options.sampling,
                                  static_cast<std::uint64_t>(step), options.excluded_token);
    context.push_back(c.token);
    out.tokens.push_back(c.token);
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.cpu_seconds = process_cpu_seconds() - cpu_start;
  return out;
}

}  // namespace metamorph::decode

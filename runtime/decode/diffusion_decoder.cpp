#include "runtime/decode/diffusion_decoder.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "runtime/core/error.hpp"

namespace metamorph::decode {

void validate(const DiffusionDecodeOptions& options, std::int64_t vocab_size) {
  require(options.block_size >= 1 && options.block_size <= 64, "--block-size ", options.block_size,
          " must be between 1 and 64");
  require(options.threshold >= 0.0 && options.threshold <= 1.0, "--threshold ", options.threshold,
          " must be in [0, 1]");
  require(options.steps_per_block >= 0, "--steps-per-block ", options.steps_per_block,
          " must be >= 0 (0: the block size)");
  require(options.mask_token >= 0 && options.mask_token < vocab_size, "[MASK] token id ",
          options.mask_token, " is outside the vocabulary [0, ", vocab_size, ")");
  validate(options.sampling);
}

namespace {

// Runs tokens ids[first, first + count) with their positions and returns the logits.
class Runner {
 public:
  Runner(Transformer& model, const DiffusionDecodeOptions& options, std::int64_t capacity)
      : model_(model), backend_(model.backend()), options_(options) {
    if (options_.use_cache) cache_ = model.make_kv_cache(capacity);
  }

  std::int64_t cached() const { return cache_.length; }

  // Cached: ids [cache.length, end) against the cache, the first `commit` of them kept.
  // Recomputed: ids [0, end) from scratch. Either way the logits of rows [first + lo, end), with
  // first the first row run, as host f32 (downloaded from a GPU; the identity on the CPU).
  Tensor run(const std::vector<std::int32_t>& ids, std::int64_t end, std::int64_t commit,
             std::int64_t lo) {
    const AttentionMask mask{MaskKind::block_causal, options_.block_size, 0};
    const std::int64_t first = options_.use_cache ? cache_.length : 0, count = end - first;
    Tensor t = backend_.host_empty({1, count}, DType::i32);
    Tensor pos = backend_.host_empty({count}, DType::i32);
    for (std::int64_t i = 0; i < count; ++i) {
      t.data<std::int32_t>()[i] = ids[static_cast<std::size_t>(first + i)];
      pos.data<std::int32_t>()[i] = static_cast<std::int32_t>(first + i);
    }
    t = backend_.from_host(t, DType::i32);
    pos = backend_.from_host(pos, DType::i32);
    ++passes_;
    const Tensor logits = options_.use_cache
                              ? model_.logits_cached(t, pos, mask, cache_, commit, lo)
                              : model_.logits(t, pos, mask).slice(lo, count);
    return backend_.to_host(logits, DType::f32);
  }
  std::int64_t passes() const { return passes_; }

 private:
  Transformer& model_;
  Backend& backend_;
  const DiffusionDecodeOptions& options_;
  KvCache cache_;
  std::int64_t passes_ = 0;
};

}  // namespace

Generation generate_diffusion(Transformer& model, const std::vector<std::int32_t>& prompt,
                              std::int64_t max_new_tokens, const DiffusionDecodeOptions& options,
                              const StepObserver& observer) {
  const ModelConfig& config = model.config();
  const auto prompt_len = static_cast<std::int64_t>(prompt.size());
  check_prompt(config, prompt_len, max_new_tokens);
  validate(options, config.vocab_size);
  const std::int64_t block = options.block_size, vocab = config.vocab_size;
  const std::int64_t total = prompt_len + max_new_tokens;
  const std::int64_t max_steps =
      options.steps_per_block > 0 ? options.steps_per_block : options.block_size;
  Backend& backend = model.backend();
  const auto start = std::chrono::steady_clock::now();
  const double cpu_start = process_cpu_seconds();

  std::vector<std::int32_t> ids(static_cast<std::size_t>(total), options.mask_token);
  std::copy(prompt.begin(), prompt.end(), ids.begin());
  Runner runner(model, options, total);
  // Logits of the last clean token before the current block (the shift's predictor of the
  // block's first token), from the pass that last ran it.
  std::vector<float> clean_tail(static_cast<std::size_t>(vocab), 0.0f);
  auto keep_row = [&](const Tensor& logits, std::int64_t row) {
    std::memcpy(clean_tail.data(), logits.data<float>() + row * vocab,
                static_cast<std::size_t>(vocab) * sizeof(float));
  };

  std::int64_t begin = (prompt_len / block) * block;  // first block with positions to decode
  if (options.use_cache && begin > 0) {
    const Tensor logits = runner.run(ids, begin, begin, begin - 1);
    keep_row(logits, 0);
  }
  std::int64_t pending = 0;  // clean tokens decoded but not yet in the cache
  Generation out;
  std::uint64_t draw = 0;
  for (; begin < total; begin += block) {
    const std::int64_t end = std::min(begin + block, total), len = end - begin;
    Tensor predicted = backend.host_empty({len, vocab}, DType::f32);
    for (std::int64_t step = 1;; ++step) {
      std::int64_t masked = 0;
      for (std::int64_t p = std::max(begin, prompt_len); p < end; ++p)
        masked += ids[static_cast<std::size_t>(p)] == options.mask_token;
      if (masked == 0) break;
      // Cached: [pending clean block ; this block] against the cache, committing the former.
      const std::int64_t first = options.use_cache ? runner.cached() : 0;
      // Only the rows that predict the block (with the shift, from the row before it) get
      // logits; rows are counted from `lo`.
      const std::int64_t lo =
          std::max<std::int64_t>(0, begin - first - (options.logit_shift ? 1 : 0));
      const Tensor logits = runner.run(ids, end, pending, lo);
      pending = 0;
      if (options.logit_shift && first < begin) keep_row(logits, begin - 1 - first - lo);
      for (std::int64_t j = 0; j < len; ++j) {
        float* dst = predicted.data<float>() + j * vocab;
        if (options.logit_shift && j == 0) {
          std::memcpy(dst, clean_tail.data(), static_cast<std::size_t>(vocab) * sizeof(float));
          continue;
        }
        const std::int64_t row = begin + j - (options.logit_shift ? 1 : 0) - first - lo;
        std::memcpy(dst, logits.data<float>() + row * vocab,
                    static_cast<std::size_t>(vocab) * sizeof(float));
      }
      if (observer) observer(begin, predicted);

      std::vector<std::pair<std::int64_t, Choice>> choices;
      for (std::int64_t j = 0; j < len; ++j) {
        if (ids[static_cast<std::size_t>(begin + j)] != options.mask_token ||
            begin + j < prompt_len)
          continue;
        choices.emplace_back(j, choose_token(predicted.data<float>() + j * vocab, vocab,
                                             options.sampling, draw++, options.mask_token));
      }
      std::size_t best = 0;
      for (std::size_t c = 1; c < choices.size(); ++c)
        if (choices[c].second.probability > choices[best].second.probability) best = c;
      for (std::size_t c = 0; c < choices.size(); ++c) {
        const bool commit =
            c == best || step >= max_steps || choices[c].second.probability >= options.threshold;
        if (commit)
          ids[static_cast<std::size_t>(begin + choices[c].first)] = choices[c].second.token;
      }
    }
    pending = len == block ? block : 0;
  }
  out.tokens.assign(ids.begin() + prompt_len, ids.end());
  out.forward_passes = runner.passes();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.cpu_seconds = process_cpu_seconds() - cpu_start;
  return out;
}

}  // namespace metamorph::decode

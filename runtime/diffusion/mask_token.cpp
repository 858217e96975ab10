#include "runtime/diffusion/mask_token.hpp"

#include <cstring>
#include <limits>

#include "runtime/core/error.hpp"

namespace metamorph::diffusion {

namespace {
// value [rows, cols] -> [rows + 1, cols]; the new row is the mean of the old rows or zero.
void grow_rows(Backend& backend, Parameter& p, bool mean_row) {
  MM_ASSERT(!p.is_sharded(), "growing the sharded parameter ", p.name);
  const std::int64_t rows = p.value.dim(0), cols = p.value.dim(1);
  Tensor grown = backend.empty({rows + 1, cols});
  std::memcpy(grown.data<float>(), p.value.data<float>(), p.value.bytes());
  float* extra = grown.data<float>() + rows * cols;
  std::vector<double> sum(static_cast<std::size_t>(cols), 0.0);
  if (mean_row)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        sum[static_cast<std::size_t>(c)] += p.value.data<float>()[r * cols + c];
  for (std::int64_t c = 0; c < cols; ++c)
    extra[c] = static_cast<float>(sum[static_cast<std::size_t>(c)] / static_cast<double>(rows));
  p.value = grown;
  p.grad = backend.zeros({rows + 1, cols});  // rebuild_flat_grads puts it back in the buffer
  // A new run starts its optimizer state from zero; keep the moments' shape in step.
  if (p.adam_m.defined()) p.adam_m = backend.zeros({rows + 1, cols});
  if (p.adam_v.defined()) p.adam_v = backend.zeros({rows + 1, cols});
  p.master = Tensor();
  p.global_shape = {rows + 1, cols};
}

// Gradients live back to back in one flat buffer (data-parallel buckets); after growing, lay
// them out again in a new buffer of the new total size.
void rebuild_flat_grads(Backend& backend, ParameterSet& params) {
  if (!params.flat_grads.defined()) return;
  std::int64_t total = 0;
  for (const auto& p : params.all()) total += p.grad.numel();
  Tensor flat = backend.zeros({total});
  std::int64_t at = 0;
  for (auto& p : params.all()) {
    Tensor slot = flat.slice(at, at + p.grad.numel()).view(p.grad.shape());
    backend.copy(p.grad, slot);
    p.grad = slot;
    at += p.grad.numel();
  }
  params.flat_grads = flat;
}
}  // namespace

std::int32_t add_mask_token(Backend& backend, ModelConfig& config, ParameterSet& params) {
  require(config.vocab_size < std::numeric_limits<std::int32_t>::max(), "vocab_size ",
          config.vocab_size, " leaves no id for [MASK]");
  Parameter* embed = params.find("model.embed_tokens.weight");
  require(embed != nullptr, "the model has no model.embed_tokens.weight to grow for [MASK]");
  const auto id = static_cast<std::int32_t>(config.vocab_size);
  grow_rows(backend, *embed, true);
  if (!config.tie_word_embeddings) {
    Parameter* head = params.find("lm_head.weight");
    require(head != nullptr, "the untied model has no lm_head.weight to grow for [MASK]");
    grow_rows(backend, *head, false);
  }
  rebuild_flat_grads(backend, params);
  config.vocab_size += 1;
  return id;
}

}  // namespace metamorph::diffusion

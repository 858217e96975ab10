// Vocabulary-parallel embedding and cross-entropy of the CPU backend: each op works on one
// rank's slice of the vocabulary; the caller combines the slices with all-reduces.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
bool local(std::int32_t id, std::int64_t offset, std::int64_t rows) {
  return id >= offset && id < offset + rows;
}
}  // namespace

void CpuBackend::embedding_forward_sharded(const Tensor& table, const Tensor& ids,
                                           std::int64_t vocab_offset, Tensor& out) {
  const std::int64_t rows = table.dim(0), hidden = table.dim(1), tokens = ids.numel();
  MM_ASSERT(out.numel() == tokens * hidden, "embedding_forward_sharded out ",
            shape_string(out.shape()));
  const auto* id = ids.data<std::int32_t>();
  const float* tp = table.data<float>();
  float* op = out.data<float>();
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (local(id[t], vocab_offset, rows))
      std::memcpy(op + t * hidden, tp + (id[t] - vocab_offset) * hidden,
                  sizeof(float) * static_cast<std::size_t>(hidden));
    else
      std::memset(op + t * hidden, 0, sizeof(float) * static_cast<std::size_t>(hidden));
  }
}

void CpuBackend::embedding_backward_sharded(const Tensor& ids, const Tensor& dout,
                                            std::int64_t vocab_offset, Tensor& dtable) {
  const std::int64_t rows = dtable.dim(0), hidden = dtable.dim(1), tokens = ids.numel();
  const auto* id = ids.data<std::int32_t>();
  const float* dp = dout.data<float>();
  float* tp = dtable.data<float>();
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!local(id[t], vocab_offset, rows)) continue;
    float* row = tp + (id[t] - vocab_offset) * hidden;
    for (std::int64_t c = 0; c < hidden; ++c) row[c] += dp[t * hidden + c];
  }
}

void CpuBackend::row_max(const Tensor& x, Tensor& out) {
  const std::int64_t cols = x.dim(-1), rows = x.numel() / cols;
  MM_ASSERT(out.numel() == rows, "row_max out ", shape_string(out.shape()));
  const float* xp = x.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for if (rows * cols > 32768)
  for (std::int64_t r = 0; r < rows; ++r) {
    float m = -std::numeric_limits<float>::infinity();
    for (std::int64_t c = 0; c < cols; ++c) m = std::max(m, xp[r * cols + c]);
    o[r] = m;
  }
}

void CpuBackend::cross_entropy_stats(const Tensor& logits, const Tensor& targets,
                                     std::int64_t vocab_offset, const Tensor& max, Tensor& sum_exp,
                                     Tensor& target_logit) {
  const std::int64_t tokens = logits.dim(0), vocab = logits.dim(1);
  MM_ASSERT(targets.numel() == tokens && max.numel() == tokens && sum_exp.numel() == tokens &&
                target_logit.numel() == tokens,
            "cross_entropy_stats shapes for logits ", shape_string(logits.shape()));
  const float* lp = logits.data<float>();
  const auto* tp = targets.data<std::int32_t>();
  const float* mp = max.data<float>();
  float* sp = sum_exp.data<float>();
  float* tl = target_logit.data<float>();
#pragma omp parallel for if (tokens * vocab > 32768)
  for (std::int64_t r = 0; r < tokens; ++r) {
    const float* row = lp + r * vocab;
    double sum = 0.0;
    for (std::int64_t c = 0; c < vocab; ++c) sum += std::exp(row[c] - mp[r]);
    sp[r] = static_cast<float>(sum);
    tl[r] = local(tp[r], vocab_offset, vocab) ? row[tp[r] - vocab_offset] : 0.0f;
  }
}

namespace {
// w: per-row loss weights, or nullptr for 1.
double finish(const Tensor& max, const Tensor& sum_exp, const Tensor& target_logit,
              const Tensor& targets, const float* w, std::int32_t ignore_index, Tensor& lse) {
  const std::int64_t tokens = targets.numel();
  const float* mp = max.data<float>();
  const float* sp = sum_exp.data<float>();
  const float* tl = target_logit.data<float>();
  const auto* tp = targets.data<std::int32_t>();
  float* out = lse.data<float>();
  double total = 0.0;
  for (std::int64_t r = 0; r < tokens; ++r) {
    const double row_lse = static_cast<double>(mp[r]) + std::log(static_cast<double>(sp[r]));
    out[r] = static_cast<float>(row_lse);
    if (tp[r] != ignore_index) total += (w != nullptr ? w[r] : 1.0) * (row_lse - tl[r]);
  }
  return total;
}

void backward_sharded(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                      const float* w, std::int32_t ignore_index, std::int64_t vocab_offset,
                      float grad_scale, Tensor& dlogits) {
  const std::int64_t tokens = logits.dim(0), vocab = logits.dim(1);
  const float* lp = logits.data<float>();
  const auto* tp = targets.data<std::int32_t>();
  const float* lsep = lse.data<float>();
  float* dp = dlogits.data<float>();
#pragma omp parallel for if (tokens * vocab > 32768)
  for (std::int64_t r = 0; r < tokens; ++r) {
    const float* row = lp + r * vocab;
    float* drow = dp + r * vocab;
    if (tp[r] == ignore_index) {
      for (std::int64_t c = 0; c < vocab; ++c) drow[c] = 0.0f;
      continue;
    }
    const float scale = grad_scale * (w != nullptr ? w[r] : 1.0f);
    for (std::int64_t c = 0; c < vocab; ++c) drow[c] = scale * std::exp(row[c] - lsep[r]);
    if (local(tp[r], vocab_offset, vocab)) drow[tp[r] - vocab_offset] -= scale;
  }
}

const float* checked_weights(const Tensor& weights, const Tensor& targets) {
  MM_ASSERT(weights.numel() == targets.numel(), "cross-entropy weights ",
            shape_string(weights.shape()), " for targets ", shape_string(targets.shape()));
  return weights.data<float>();
}
}  // namespace

double CpuBackend::cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                        const Tensor& target_logit, const Tensor& targets,
                                        std::int32_t ignore_index, Tensor& lse) {
  return finish(max, sum_exp, target_logit, targets, nullptr, ignore_index, lse);
}

void CpuBackend::cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                                const Tensor& lse, std::int32_t ignore_index,
                                                std::int64_t vocab_offset, float grad_scale,
                                                Tensor& dlogits) {
  backward_sharded(logits, targets, lse, nullptr, ignore_index, vocab_offset, grad_scale, dlogits);
}

double CpuBackend::weighted_cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                                 const Tensor& target_logit, const Tensor& targets,
                                                 const Tensor& weights, std::int32_t ignore_index,
                                                 Tensor& lse) {
  return finish(max, sum_exp, target_logit, targets, checked_weights(weights, targets),
                ignore_index, lse);
}

void CpuBackend::weighted_cross_entropy_backward_sharded(
    const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& weights,
    std::int32_t ignore_index, std::int64_t vocab_offset, float grad_scale, Tensor& dlogits) {
  backward_sharded(logits, targets, lse, checked_weights(weights, targets), ignore_index,
                   vocab_offset, grad_scale, dlogits);
}

}  // namespace metamorph

// Softmax cross-entropy of the CPU backend over logits [tokens, vocab].
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/backends/cpu/fast_exp.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
struct CeShape {
  std::int64_t tokens;
  std::int64_t vocab;
};

CeShape ce_shape(const Tensor& logits, const Tensor& targets, const Tensor& lse) {
  MM_ASSERT(logits.rank() == 2, "cross-entropy wants logits [tokens, vocab], got ",
            shape_string(logits.shape()));
  const CeShape s{logits.dim(0), logits.dim(1)};
  MM_ASSERT(targets.numel() == s.tokens && lse.numel() == s.tokens, "cross-entropy targets ",
            shape_string(targets.shape()), " lse ", shape_string(lse.shape()), " for logits ",
            shape_string(logits.shape()));
  require(s.vocab > 0 || s.tokens == 0, "cross-entropy over an empty vocabulary");
  return s;
}

// Target ids come from data files, so a bad one is the user's error, named with its row.
void check_targets(const std::int32_t* t, const CeShape& s, std::int32_t ignore_index) {
  for (std::int64_t r = 0; r < s.tokens; ++r)
    require(t[r] == ignore_index || (t[r] >= 0 && t[r] < s.vocab), "target id ", t[r], " at token ",
            r, " is outside the vocabulary [0, ", s.vocab, ") and is not the ignore index ",
            ignore_index);
}

// weights may be null (every row weighs 1).
double ce_forward(const Tensor& logits, const Tensor& targets, const float* weights,
                  std::int32_t ignore_index, Tensor& lse) {
  const CeShape s = ce_shape(logits, targets, lse);
  const float* lp = logits.data<float>();
  const auto* tp = targets.data<std::int32_t>();
  float* out_lse = lse.data<float>();
  check_targets(tp, s, ignore_index);
  // Per-row losses summed in row order afterwards, so the total does not depend on threads.
  std::vector<double> loss(static_cast<std::size_t>(s.tokens), 0.0);
#pragma omp parallel if (s.tokens * s.vocab > 32768)
  {
    std::vector<float> exps(static_cast<std::size_t>(s.vocab));
#pragma omp for
    for (std::int64_t r = 0; r < s.tokens; ++r) {
      const float* row = lp + r * s.vocab;
      float max = -std::numeric_limits<float>::infinity();
      for (std::int64_t c = 0; c < s.vocab; ++c) max = std::max(max, row[c]);
      std::copy(row, row + s.vocab, exps.begin());
      exp_scaled_shifted(exps.data(), s.vocab, 1.0f, max);
      const double row_lse =
          static_cast<double>(max) + std::log(sum_in_double(exps.data(), s.vocab));
      out_lse[r] = static_cast<float>(row_lse);
      if (tp[r] != ignore_index)
        loss[static_cast<std::size_t>(r)] =
            (weights != nullptr ? static_cast<double>(weights[r]) : 1.0) * (row_lse - row[tp[r]]);
    }
  }
  double total = 0.0;
  for (double l : loss) total += l;
  return total;
}

void ce_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                 const float* weights, std::int32_t ignore_index, float grad_scale,
                 Tensor& dlogits) {
  const CeShape s = ce_shape(logits, targets, lse);
  MM_ASSERT(dlogits.numel() == logits.numel(), "cross-entropy dlogits ",
            shape_string(dlogits.shape()));
  const float* lp = logits.data<float>();
  const auto* tp = targets.data<std::int32_t>();
  const float* lsep = lse.data<float>();
  float* dp = dlogits.data<float>();
  check_targets(tp, s, ignore_index);
#pragma omp parallel for if (s.tokens * s.vocab > 32768)
  for (std::int64_t r = 0; r < s.tokens; ++r) {
    const float* row = lp + r * s.vocab;
    float* drow = dp + r * s.vocab;
    if (tp[r] == ignore_index) {
      for (std::int64_t c = 0; c < s.vocab; ++c) drow[c] = 0.0f;
      continue;
    }
    // lse was rounded to float; with large logits that shifts every exp(l - lse) by the same
    // factor, so renormalising by their sum restores softmax to full precision.
    const float row_lse = lsep[r];
    const float scale = weights != nullptr ? grad_scale * weights[r] : grad_scale;
    if (drow != row) std::copy(row, row + s.vocab, drow);  // dlogits may be logits
    exp_scaled_shifted(drow, s.vocab, 1.0f, row_lse);
    const double sum = sum_in_double(drow, s.vocab);
    const float factor = static_cast<float>(scale / sum);
    for (std::int64_t c = 0; c < s.vocab; ++c) drow[c] *= factor;
    drow[tp[r]] -= scale;
  }
}

const float* row_weights(const Tensor& weights, const Tensor& targets) {
  MM_ASSERT(weights.numel() == targets.numel(), "cross-entropy weights ",
            shape_string(weights.shape()), " for targets ", shape_string(targets.shape()));
  return weights.data<float>();
}
}  // namespace

double CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                         std::int32_t ignore_index, Tensor& lse) {
  return ce_forward(logits, targets, nullptr, ignore_index, lse);
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& lse, std::int32_t ignore_index,
                                        float grad_scale, Tensor& dlogits) {
  ce_backward(logits, targets, lse, nullptr, ignore_index, grad_scale, dlogits);
}

double CpuBackend::weighted_cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                                  const Tensor& weights, std::int32_t ignore_index,
                                                  Tensor& lse) {
  return ce_forward(logits, targets, row_weights(weights, targets), ignore_index, lse);
}

void CpuBackend::weighted_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                                 const Tensor& lse, const Tensor& weights,
                                                 std::int32_t ignore_index, float grad_scale,
                                                 Tensor& dlogits) {
  ce_backward(logits, targets, lse, row_weights(weights, targets), ignore_index, grad_scale,
              dlogits);
}

}  // namespace metamorph

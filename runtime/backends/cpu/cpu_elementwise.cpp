// Elementwise ops, reductions and the embedding table lookup of the CPU backend.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
constexpr std::int64_t kSumChunk = 65536;

void check_same_shape(const Tensor& a, const Tensor& b, const char* op) {
  MM_ASSERT(a.shape() == b.shape(), op, ": ", shape_string(a.shape()), " vs ",
            shape_string(b.shape()));
}
// Token ids come from data files, so a bad one is the user's error, named with its position.
void check_token_ids(const std::int32_t* id, std::int64_t tokens, std::int64_t vocab) {
  for (std::int64_t t = 0; t < tokens; ++t)
    require(id[t] >= 0 && id[t] < vocab, "token id ", id[t], " at position ", t,
            " is outside the vocabulary [0, ", vocab, ")");
}
}  // namespace

void CpuBackend::fill(Tensor& x, float value) {
  const std::int64_t n = x.numel();
  if (x.dtype() == DType::f32) {
    float* p = x.data<float>();
#pragma omp parallel for if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) p[i] = value;
  } else if (value == 0.0f) {
    std::memset(x.raw(), 0, x.bytes());
  } else if (x.dtype() == DType::i32) {
    auto* p = x.data<std::int32_t>();
    for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<std::int32_t>(value);
  } else if (x.dtype() == DType::i64) {
    auto* p = x.data<std::int64_t>();
    for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<std::int64_t>(value);
  } else {
    MM_ASSERT(false, "fill of a ", dtype_name(x.dtype()), " tensor with ", value);
  }
}

void CpuBackend::copy(const Tensor& src, Tensor& dst) {
  MM_ASSERT(src.numel() == dst.numel() && src.dtype() == dst.dtype(), "copy ",
            shape_string(src.shape()), " to ", shape_string(dst.shape()));
  std::memmove(dst.raw(), src.raw(), src.bytes());
}

void CpuBackend::axpy(float alpha, const Tensor& x, Tensor& y) {
  check_same_shape(x, y, "axpy");
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const std::int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) yp[i] += alpha * xp[i];
}

void CpuBackend::scale(Tensor& x, float alpha) {
  float* p = x.data<float>();
  const std::int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) p[i] *= alpha;
}

double CpuBackend::sum_squares(const Tensor& x) {
  const float* p = x.data<float>();
  const std::int64_t n = x.numel();
  // Fixed chunks summed in chunk order: an OpenMP reduction combines partial sums in whatever
  // order threads finish, and the gradient norm (hence clipping) must be reproducible.
  const std::int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for if (chunks > 1)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t end = std::min(n, (c + 1) * kSumChunk);
    double sum = 0.0;
    for (std::int64_t i = c * kSumChunk; i < end; ++i) sum += static_cast<double>(p[i]) * p[i];
    partial[static_cast<std::size_t>(c)] = sum;
  }
  double sum = 0.0;
  for (double part : partial) sum += part;
  return sum;
}

bool CpuBackend::all_finite(const Tensor& x) {
  const float* p = x.data<float>();
  const std::int64_t n = x.numel();
  bool finite = true;
#pragma omp parallel for reduction(&& : finite) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) finite = finite && std::isfinite(p[i]);
  return finite;
}

void CpuBackend::add_bias(Tensor& x, const Tensor& bias) {
  const std::int64_t cols = bias.numel();
  MM_ASSERT(x.dim(-1) == cols, "add_bias: ", shape_string(x.shape()), " + ",
            shape_string(bias.shape()));
  const std::int64_t rows = x.numel() / cols;
  float* xp = x.data<float>();
  const float* bp = bias.data<float>();
#pragma omp parallel for if (rows * cols > 65536)
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) xp[r * cols + c] += bp[c];
}

void CpuBackend::bias_backward(const Tensor& dy, Tensor& dbias) {
  const std::int64_t cols = dbias.numel();
  MM_ASSERT(dy.dim(-1) == cols, "bias_backward: ", shape_string(dy.shape()));
  const std::int64_t rows = dy.numel() / cols;
  const float* dp = dy.data<float>();
  float* bp = dbias.data<float>();
#pragma omp parallel for if (rows * cols > 65536)
  for (std::int64_t c = 0; c < cols; ++c) {
    double sum = 0.0;
    for (std::int64_t r = 0; r < rows; ++r) sum += dp[r * cols + c];
    bp[c] += static_cast<float>(sum);
  }
}

void CpuBackend::embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) {
  MM_ASSERT(table.rank() == 2, "embedding table ", shape_string(table.shape()));
  const std::int64_t vocab = table.dim(0), hidden = table.dim(1), tokens = ids.numel();
  MM_ASSERT(out.numel() == tokens * hidden, "embedding_forward out ", shape_string(out.shape()));
  const auto* id = ids.data<std::int32_t>();
  check_token_ids(id, tokens, vocab);
  const float* tp = table.data<float>();
  float* op = out.data<float>();
#pragma omp parallel for if (tokens * hidden > 65536)
  for (std::int64_t t = 0; t < tokens; ++t)
    std::memcpy(op + t * hidden, tp + static_cast<std::int64_t>(id[t]) * hidden,
                sizeof(float) * static_cast<std::size_t>(hidden));
}

void CpuBackend::embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  MM_ASSERT(dtable.rank() == 2, "embedding dtable ", shape_string(dtable.shape()));
  const std::int64_t vocab = dtable.dim(0), hidden = dtable.dim(1), tokens = ids.numel();
  MM_ASSERT(dout.numel() == tokens * hidden, "embedding_backward dout ", shape_string(dout.shape()),
            " for ", tokens, " ids of width ", hidden);
  const auto* id = ids.data<std::int32_t>();
  check_token_ids(id, tokens, vocab);
  const float* dp = dout.data<float>();
  float* tp = dtable.data<float>();
  // Sequential over tokens: repeated ids must accumulate without races.
  for (std::int64_t t = 0; t < tokens; ++t) {
    float* row = tp + static_cast<std::int64_t>(id[t]) * hidden;
    const float* g = dp + t * hidden;
    for (std::int64_t c = 0; c < hidden; ++c) row[c] += g[c];
  }
}

}  // namespace metamorph

// RMSNorm of the CPU backend over the last dim of x [rows, n] (any leading shape).
#include <algorithm>
#include <cmath>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
// Columns per task of the weight-gradient reduction: each task owns its columns and walks the
// rows in order, so dw is bit-identical for any thread count.
constexpr std::int64_t kColumnBlock = 16;
}  // namespace

void CpuBackend::rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                                 Tensor& rstd) {
  const std::int64_t n = w.numel();
  MM_ASSERT(x.rank() >= 1 && x.dim(-1) == n, "rmsnorm x ", shape_string(x.shape()), " w ",
            shape_string(w.shape()));
  const std::int64_t rows = n == 0 ? 0 : x.numel() / n;
  MM_ASSERT(y.numel() == x.numel() && rstd.numel() == rows, "rmsnorm y ", shape_string(y.shape()),
            " rstd ", shape_string(rstd.shape()));
  require(eps >= 0.0f && std::isfinite(eps), "rms_norm_eps ", eps, " must be finite and >= 0");
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* yp = y.data<float>();
  float* rp = rstd.data<float>();
#pragma omp parallel for if (rows * n > 32768)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * n;
    double sum = 0.0;
    for (std::int64_t j = 0; j < n; ++j) sum += static_cast<double>(xr[j]) * xr[j];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(n) + eps));
    rp[r] = inv;
    float* yr = yp + r * n;
    for (std::int64_t j = 0; j < n; ++j) yr[j] = xr[j] * inv * wp[j];
  }
}

void CpuBackend::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                  const Tensor& rstd, Tensor& dx, Tensor& dw) {
  const std::int64_t n = w.numel();
  MM_ASSERT(x.rank() >= 1 && x.dim(-1) == n && dw.numel() == n, "rmsnorm_backward x ",
            shape_string(x.shape()), " w ", shape_string(w.shape()), " dw ",
            shape_string(dw.shape()));
  const std::int64_t rows = n == 0 ? 0 : x.numel() / n;
  MM_ASSERT(dy.numel() == x.numel() && dx.numel() == x.numel() && rstd.numel() == rows,
            "rmsnorm_backward dy ", shape_string(dy.shape()), " dx ", shape_string(dx.shape()),
            " rstd ", shape_string(rstd.shape()));
  const float* dyp = dy.data<float>();
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* rp = rstd.data<float>();
  float* dxp = dx.data<float>();
  float* dwp = dw.data<float>();

  // dw first: dx may alias dy (in-place backward through the norm).
  const std::int64_t column_blocks = (n + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for if (rows * n > 32768)
  for (std::int64_t cb = 0; cb < column_blocks; ++cb) {
    const std::int64_t j0 = cb * kColumnBlock, j1 = std::min(n, j0 + kColumnBlock);
    double acc[kColumnBlock] = {};
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * n;
      const float* dyr = dyp + r * n;
      for (std::int64_t j = j0; j < j1; ++j)
        acc[j - j0] += static_cast<double>(dyr[j]) * xr[j] * rp[r];
    }
    for (std::int64_t j = j0; j < j1; ++j) dwp[j] += static_cast<float>(acc[j - j0]);
  }

  // dx = rstd * (g - x * rstd^2 * mean(g * x)) with g = dy * w.
#pragma omp parallel for if (rows * n > 32768)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * n;
    const float* dyr = dyp + r * n;
    double dot = 0.0;
    for (std::int64_t j = 0; j < n; ++j) dot += static_cast<double>(dyr[j]) * wp[j] * xr[j];
    const float inv = rp[r];
    const float c = static_cast<float>(dot / static_cast<double>(n)) * inv * inv;
    float* dxr = dxp + r * n;
    for (std::int64_t j = 0; j < n; ++j) dxr[j] = inv * (dyr[j] * wp[j] - xr[j] * c);
  }
}

}  // namespace metamorph

// Row gather/scatter of the CPU backend: the token permutation of Mixture-of-Experts blocks.
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

void check_rows(const char* op, const Tensor& rows, const Tensor& index, const Tensor& weights,
                const Tensor& table) {
  MM_ASSERT(rows.rank() == 2 && table.rank() == 2 && rows.dim(1) == table.dim(1) &&
                index.dtype() == DType::i32 && index.numel() == rows.dim(0) &&
                (!weights.defined() || weights.numel() == rows.dim(0)),
            op, ": rows ", shape_string(rows.shape()), " index ", shape_string(index.shape()),
            " table ", shape_string(table.shape()));
}

}  // namespace

void CpuBackend::gather_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                             Tensor& dst) {
  check_rows("gather_rows", dst, index, weights, src);
  const std::int64_t m = dst.dim(0), h = dst.dim(1), n = src.dim(0);
  const auto* idx = index.data<std::int32_t>();
  const float* w = weights.defined() ? weights.data<float>() : nullptr;
  const float* s = src.data<float>();
  float* d = dst.data<float>();
  // Checked before the parallel loop: an exception must not leave an OpenMP region.
  for (std::int64_t i = 0; i < m; ++i)
    MM_ASSERT(idx[i] >= 0 && idx[i] < n, "gather_rows: index ", idx[i], " outside [0, ", n, ")");
#pragma omp parallel for if (m * h > 32768)
  for (std::int64_t i = 0; i < m; ++i) {
    const float scale = w != nullptr ? w[i] : 1.0f;
    const float* from = s + static_cast<std::int64_t>(idx[i]) * h;
    float* to = d + i * h;
    for (std::int64_t j = 0; j < h; ++j) to[j] = scale * from[j];
  }
}

void CpuBackend::scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                                  Tensor& dst) {
  check_rows("scatter_add_rows", src, index, weights, dst);
  const std::int64_t m = src.dim(0), h = src.dim(1), n = dst.dim(0);
  const auto* idx = index.data<std::int32_t>();
  const float* w = weights.defined() ? weights.data<float>() : nullptr;
  const float* s = src.data<float>();
  float* d = dst.data<float>();
  // Serial over rows: several rows may land on one destination, and a fixed order keeps the
  // sums deterministic.
  for (std::int64_t i = 0; i < m; ++i) {
    MM_ASSERT(idx[i] >= 0 && idx[i] < n, "scatter_add_rows: index ", idx[i], " outside [0, ", n,
              ")");
    const float scale = w != nullptr ? w[i] : 1.0f;
    const float* from = s + i * h;
    float* to = d + static_cast<std::int64_t>(idx[i]) * h;
    for (std::int64_t j = 0; j < h; ++j) to[j] += scale * from[j];
  }
}

void CpuBackend::row_dot(const Tensor& a, const Tensor& b, Tensor& out) {
  MM_ASSERT(a.rank() == 2 && a.shape() == b.shape() && out.numel() == a.dim(0), "row_dot a ",
            shape_string(a.shape()), " b ", shape_string(b.shape()), " out ",
            shape_string(out.shape()));
  const std::int64_t m = a.dim(0), h = a.dim(1);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for if (m * h > 32768)
  for (std::int64_t i = 0; i < m; ++i) {
    double sum = 0.0;
    for (std::int64_t j = 0; j < h; ++j) sum += static_cast<double>(pa[i * h + j]) * pb[i * h + j];
    o[i] = static_cast<float>(sum);
  }
}

}  // namespace metamorph

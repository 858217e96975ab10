// GEMM of the CPU backend: OpenBLAS sgemm on row-major operands.
#include <cblas.h>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

void CpuBackend::matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                        float alpha, float beta) {
  MM_ASSERT(a.rank() == 2 && b.rank() == 2 && c.rank() == 2,
            "matmul wants 2-D operands: ", shape_string(a.shape()), " ", shape_string(b.shape()),
            " ", shape_string(c.shape()));
  const std::int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const std::int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const std::int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const std::int64_t n = trans_b ? b.dim(0) : b.dim(1);
  MM_ASSERT(k == kb && c.dim(0) == m && c.dim(1) == n, "matmul shapes ", shape_string(a.shape()),
            trans_a ? "^T" : "", " @ ", shape_string(b.shape()), trans_b ? "^T" : "", " -> ",
            shape_string(c.shape()));
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // An empty inner product is zero; BLAS would reject the leading dimension 0 instead.
    float* cp = c.data<float>();
    for (std::int64_t i = 0; i < m * n; ++i) cp[i] = beta == 0.0f ? 0.0f : beta * cp[i];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a.data<float>(), static_cast<int>(a.dim(1)),
              b.data<float>(), static_cast<int>(b.dim(1)), beta, c.data<float>(),
              static_cast<int>(c.dim(1)));
}

}  // namespace metamorph

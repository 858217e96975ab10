#pragma once
// The warp-per-row RMSNorm kernels (cuda_norm_warp.cu), called by the launchers of cuda_norm.cu
// once the shapes are checked. Each returns false, launching nothing, where the shape or the
// pointers do not fit its 16-byte register layout; the caller then runs the rows kernels.
#include <cstdint>

#include "runtime/backends/cuda/cuda_backend.hpp"

namespace metamorph::cuda {

// prefetch: the next row's loads before the current row's reduction (where the registers allow);
// shared_weight: the weight staged once per block in shared memory, else read from global memory
// (L1) for every row; row_warps: the warps of the block that share a backward row (1, 2 or 4;
// fewer for rows of fewer runs per lane than that; the forward ignores it).
struct WarpNormOptions {
  bool prefetch = false;
  bool shared_weight = true;
  int row_warps = 1;
};

bool rmsnorm_forward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& x,
                          const Tensor& w, float eps, std::int64_t rows, std::int64_t n, Tensor& y,
                          Tensor& rstd);
bool rmsnorm_backward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& dy,
                           const Tensor& x, const Tensor& w, const Tensor& rstd, std::int64_t rows,
                           std::int64_t n, Tensor& dx, Tensor& dw);

// The residual add fused with the norm beside it, with the bits of the two ops run one after the
// other (axpy(1, x, r) then rmsnorm_forward_warp(r); rmsnorm_backward_warp then
// axpy(1, residual_grad, dx)), the backward on the plain kernel's grid so that dw's sums keep
// their order. Each also returns false where x (residual_grad) is not of r's (dx's) dtype or not
// 16-byte aligned. residual_grad must not alias dx; dx may alias dy.
bool add_rmsnorm_forward_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& x,
                              Tensor& r, const Tensor& w, float eps, std::int64_t rows,
                              std::int64_t n, Tensor& y, Tensor& rstd);
bool rmsnorm_backward_add_warp(WarpNormOptions options, CudaBackend& backend, const Tensor& dy,
                               const Tensor& x, const Tensor& w, const Tensor& rstd,
                               const Tensor& residual_grad, std::int64_t rows, std::int64_t n,
                               Tensor& dx, Tensor& dw);

}  // namespace metamorph::cuda

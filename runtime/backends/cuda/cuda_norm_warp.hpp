#pragma once
// The warp-per-row RMSNorm kernels (cuda_norm_warp.cu), called by the launchers of cuda_norm.cu
// once the shapes are checked. Each returns false, launching nothing, where the shape or the
// pointers do not fit its 16-byte register layout; the caller then runs the rows kernels.
#include <cstdint>

#include "runtime/backends/cuda/cuda_backend.hpp"

namespace metamorph::cuda {

bool rmsnorm_forward_warp(bool prefetch, CudaBackend& backend, const Tensor& x, const Tensor& w,
                          float eps, std::int64_t rows, std::int64_t n, Tensor& y, Tensor& rstd);
bool rmsnorm_backward_warp(bool prefetch, CudaBackend& backend, const Tensor& dy, const Tensor& x,
                           const Tensor& w, const Tensor& rstd, std::int64_t rows, std::int64_t n,
                           Tensor& dx, Tensor& dw);

}  // namespace metamorph::cuda

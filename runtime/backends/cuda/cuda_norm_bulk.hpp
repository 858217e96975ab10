#pragma once
// The RMSNorm backward with its rows staged in shared memory by bulk copies (the `bulk` kernel of
// cuda_kernel_variants.hpp, cuda_norm_bulk.cu), called by the launchers of cuda_norm.cu once the
// shapes are checked. Returns false, launching nothing, where the shape or the pointers do not fit
// (n not a multiple of 8, a pointer off a 16-byte boundary, rows too long for two stages of shared
// memory); the caller then runs another kernel.
#include <cstdint>

#include "runtime/backends/cuda/cuda_backend.hpp"

namespace metamorph::cuda {

// With `residual_grad` (not aliasing dx), dx += residual_grad after the backward, with the bits of
// the plain kernel followed by axpy(1, residual_grad, dx). dx may alias dy.
bool rmsnorm_backward_bulk(CudaBackend& backend, const Tensor& dy, const Tensor& x, const Tensor& w,
                           const Tensor& rstd, const Tensor* residual_grad, std::int64_t rows,
                           std::int64_t n, Tensor& dx, Tensor& dw);

}  // namespace metamorph::cuda

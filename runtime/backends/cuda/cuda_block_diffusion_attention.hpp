#pragma once
// Block diffusion's training attention ([x_t ; x_0] of 2n rows, no query offset, bf16, head_dim
// 64 or 128) as two causal cuDNN attentions and our kernels on the few keys a row they leave
// (cuda_block_diffusion_attention.cu says how). Each returns false when the call is outside that
// or cuDNN declines a part; the caller then runs the whole mask on our kernels, which overwrite
// every output.
#include "runtime/backends/cuda/cuda_attention_common.cuh"
#include "runtime/backends/cuda/cudnn_attention.hpp"
#include "runtime/core/arena.hpp"

namespace metamorph::cuda {

bool block_diffusion_attention_forward(CudnnAttention& cudnn, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const AttentionMask& mask, float scale,
                                       const Geometry& g, Tensor& out, Tensor& lse, Arena& arena);

// `delta` is rowsum(dout * out) [b, h, 2n]; `atomic_dq` as in attention_backward_tensor_cores.
bool block_diffusion_attention_backward(CudnnAttention& cudnn, const Tensor& dout, const Tensor& q,
                                        const Tensor& k, const Tensor& v, const Tensor& out,
                                        const Tensor& lse, const Tensor& delta,
                                        const AttentionMask& mask, float scale, const Geometry& g,
                                        Tensor& dq, Tensor& dk, Tensor& dv, Arena& arena,
                                        bool atomic_dq);

}  // namespace metamorph::cuda

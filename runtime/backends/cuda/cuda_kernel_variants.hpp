#pragma once
// The kernel variants of RMSNorm and RoPE, each callable on its own so that one benchmark run can
// time them side by side and the op tests can check every one against the CPU backend. The
// backend's rmsnorm_forward, rmsnorm_backward and rope call the defaults below; nothing here is
// read from the environment.
#include "runtime/backends/cuda/cuda_backend.hpp"

namespace metamorph::cuda {

// rows: a row over 1 to 8 warps of a 256-thread block, one row (forward) or a fixed 64-row chunk
//   (backward) per block, the rows of a block reduced together (cuda_norm.cu).
// warp: one warp per row over a grid sized to fill the device once; each warp walks rows
//   gridDim.x * 4 apart, the weight staged once per block in shared memory, the backward's weight
//   gradient summed per warp in shared memory and per block at its end (cuda_norm_warp.cu).
// warp_prefetch: as warp, with the next row's loads issued before the current row is reduced and
//   stored, so that every warp keeps a row in flight (where the registers allow: bf16 rows up to
//   4096 forward and 2048 backward, f32 rows up to 2048 forward; elsewhere as warp).
// warp_prefetch_l1w: as warp_prefetch with the weight read from global memory (L1) for every row
//   instead of staged in shared memory: less shared memory per block, so more resident blocks
//   where shared memory bounds them (the bf16 backward at 4096), for more weight loads.
// warp_pair: as warp_prefetch, with the backward's row over two warps of the block, each holding
//   half its runs: where one warp's registers cannot hold a prefetched row (bf16 rows above 2048,
//   whose backward warp_prefetch runs without its prefetch and with 80 KB of shared memory a
//   block) each warp prefetches its half, and its weight-gradient sums are half as large. The
//   halves' dot products meet through shared memory behind a barrier of the pair. Rows of one
//   run per lane (width 256 bf16 or less) take one warp; the forward is warp_prefetch's.
// warp_quad: as warp_pair over all four warps of the block, a quarter of the row each, meeting
//   behind the block's barrier. A lane's quarter of a 4096 bf16 row is 4 runs, so the fused
//   backward (rmsnorm_backward_add) prefetches the residual gradient's row with dy's and x's
//   (every variant does where the three fit the registers). Rows of fewer than four runs per lane
//   take a pair or one warp.
// bulk: the backward's rows staged in shared memory by the SM's bulk copies (cp.async.bulk),
//   several rows ahead in a ring of buffers, a row over a 256-thread block (cuda_norm_bulk.cu):
//   the rows in flight cost no registers. Rows of up to the stages' shared memory (two stages at
//   least); elsewhere, and for the forward, as warp_prefetch.
// The warp kernels take 16-byte runs only (width a multiple of 8, aligned pointers, width up to
// 4096, f32 backward up to 2048, or 4096 with warp_pair or warp_quad); other shapes run the rows
// kernels.
enum class RmsNormKernel {
  rows,
  warp,
  warp_prefetch,
  warp_prefetch_l1w,
  warp_pair,
  warp_quad,
  bulk
};
inline constexpr RmsNormKernel kRmsNormKernels[] = {
    RmsNormKernel::rows,          RmsNormKernel::warp,
    RmsNormKernel::warp_prefetch, RmsNormKernel::warp_prefetch_l1w,
    RmsNormKernel::warp_pair,     RmsNormKernel::warp_quad,
    RmsNormKernel::bulk};
// The defaults are the fastest measured (H200, docs/benchmarks.md): forward warp_prefetch_l1w
// (78% / 72% of the copy bandwidth at widths 2048 / 4096), backward warp_prefetch (70% / 60%;
// warp_prefetch_l1w's per-row weight loads cost the backward 10-14 points), except where its
// prefetch does not fit (default_rmsnorm_backward below). The bf16 backward above 2048: bulk
// (H100, t8192 h4096, fused with the residual add as training runs it: 83% of the copy
// bandwidth, against 77-78% for warp_pair and warp_quad in the same run).
inline constexpr RmsNormKernel kDefaultRmsNormForward = RmsNormKernel::warp_prefetch_l1w;
const char* kernel_name(RmsNormKernel kernel);

// The backward's kernel for rows of n elements of x's dtype (rmsnorm_backward and
// rmsnorm_backward_add run it): bulk for bf16 rows of more than 2048 up to 4096 elements (16 runs
// per lane: warp_prefetch cannot prefetch them in registers), else warp_prefetch.
RmsNormKernel default_rmsnorm_backward(std::int64_t n, DType dtype);

void rmsnorm_forward_with(RmsNormKernel kernel, CudaBackend& backend, const Tensor& x,
                          const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward_with(RmsNormKernel kernel, CudaBackend& backend, const Tensor& dy,
                           const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                           Tensor& dw);
// The backward fused with dx += residual_grad (CudaBackend::rmsnorm_backward_add runs it with
// default_rmsnorm_backward's kernel): where `kernel` is a warp or bulk kernel that takes the
// shape, one pass with the bits of rmsnorm_backward_with(kernel) followed by
// axpy(1, residual_grad, dx); elsewhere that composition itself.
void rmsnorm_backward_add_with(RmsNormKernel kernel, CudaBackend& backend, const Tensor& dy,
                               const Tensor& x, const Tensor& w, const Tensor& rstd,
                               const Tensor& residual_grad, Tensor& dx, Tensor& dw);

// table: a cos/sin table of every (position, frequency) pair built by a first kernel, read by the
//   rotation kernel for every batch row and head (cuda_rope.cu).
// fused: one kernel; a warp takes one position and a group of batch rows (the groups are smaller
//   the shorter the sequence, so that there are thousands of warps: 2 of 4 rows at seq 4096),
//   computes the position's cos and sin once in shared memory and rotates every head of its rows
//   with 16-byte accesses, four run pairs in flight per lane. Shapes without 16-byte runs take the
//   table.
// fused_deep: as fused with eight run pairs in flight per lane (more registers, fewer warps).
enum class RopeKernel { table, fused, fused_deep };
inline constexpr RopeKernel kRopeKernels[] = {RopeKernel::table, RopeKernel::fused,
                                              RopeKernel::fused_deep};
// table measured fastest (74% of the copy bandwidth on an H200; fused 68%, fused_deep 61%): its
// cos/sin table is small enough to stay in L2, and the fused kernels' double sincos per position
// costs more than reading it.
inline constexpr RopeKernel kDefaultRope = RopeKernel::table;
const char* kernel_name(RopeKernel kernel);

void rope_with(RopeKernel kernel, CudaBackend& backend, Tensor& x, const Tensor& positions,
               float theta, bool inverse);

}  // namespace metamorph::cuda

// Block diffusion's [x_t ; x_0] attention as two causal attentions on cuDNN and a remainder of a
// few keys a row on our tensor-core kernels (attention_mask.hpp, block_diffusion_local):
//   A: x_0 over x_0, key <= query (n rows);
//   C: x_t over x_0 a block behind, clean key <= noisy query - block (n - block rows: the noisy
//      rows from `block` on, over the first n - block clean keys, which is causal again);
//   L: the rest (each noisy block over itself and over the clean keys of the block before it not
//      in C; each clean row over the later keys of its own block).
// The forward merges each row's two partial softmaxes by their log-sum-exps. The backward of each
// part uses the merged out and lse (the probabilities of the whole row), so the parts' gradients
// add up to the whole's; they are added in a fixed order.
#include <cmath>

#include "runtime/backends/cuda/cuda_attention_common.cuh"
#include "runtime/backends/cuda/cuda_block_diffusion_attention.hpp"
#include "runtime/backends/cuda/cuda_check.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

struct Parts {
  std::int64_t batch, n, block, heads, kv_heads, dim;
  __host__ __device__ std::int64_t shifted() const { return n - block; }  // part C rows, maybe <= 0
};

bool parts_of(const AttentionMask& mask, const Geometry& g, Parts& p) {
  if (mask.kind != MaskKind::block_diffusion || g.q_offset != 0 || g.sq != g.sk) return false;
  if (mask.clean_offset <= 0 || g.sq != 2 * mask.clean_offset) return false;
  p = Parts{g.batch, mask.clean_offset, mask.block_size, g.heads, g.kv_heads, g.dim};
  return true;
}

AttentionMask local_mask(const AttentionMask& mask) {
  AttentionMask local = mask;
  local.kind = MaskKind::block_diffusion_local;
  return local;
}

template <class T>
const T* rows(const Tensor& t, std::int64_t row, std::int64_t width) {
  return static_cast<const T*>(t.raw()) + row * width;
}
template <class T>
T* rows(Tensor& t, std::int64_t row, std::int64_t width) {
  return static_cast<T*>(t.raw()) + row * width;
}

// The first query row of part A (clean over clean) or C (noisy over clean, a block behind).
std::int64_t part_row(const Parts& p, bool clean_part) {
  return clean_part ? p.n : p.block;
}

// The cuDNN views of part A or C: q from part_row, k and v from the clean half's first row.
CudnnAttentionViews part_views(const Parts& p, bool clean_part, const Tensor& q, const Tensor& k,
                               const Tensor& v) {
  CudnnAttentionViews views;
  views.batch = p.batch;
  views.seq = clean_part ? p.n : p.shifted();
  views.storage_seq = 2 * p.n;
  views.heads = p.heads;
  views.kv_heads = p.kv_heads;
  views.dim = p.dim;
  views.causal = true;
  views.q = rows<bf16>(q, part_row(p, clean_part), p.heads * p.dim);
  views.k = rows<bf16>(k, p.n, p.kv_heads * p.dim);
  views.v = rows<bf16>(v, p.n, p.kv_heads * p.dim);
  return views;
}

// Whether cuDNN has plans for both parts (A, and C where it has rows): asked before our kernels
// run the remainder, so that a declined part costs no work of ours.
bool cudnn_has_parts(CudnnAttention& cudnn, const Parts& p, bool backward, const Tensor& q,
                     const Tensor& k, const Tensor& v) {
  for (const bool clean_part : {true, false}) {
    if (!clean_part && p.shifted() <= 0) break;
    if (!cudnn.has_plan(part_views(p, clean_part, q, k, v), backward)) return false;
  }
  return true;
}

// One row's lse from part A or C (packed [b, h, rows]), -inf for the first noisy block.
__device__ __forceinline__ float part_lse(const float* stats_a, const float* stats_c,
                                          std::int64_t bh, std::int64_t i, std::int64_t n,
                                          std::int64_t block) {
  if (i >= n) return stats_a[bh * n + (i - n)];
  if (i >= block) return stats_c[bh * (n - block) + (i - block)];
  return -INFINITY;
}

// out (holding part A's and C's rows) and L's out_local merged row by row; lse likewise.
__global__ void merge_forward_kernel(const bf16* out_local, const float* lse_local,
                                     const float* stats_a, const float* stats_c, Parts p, bf16* out,
                                     float* lse) {
  const std::int64_t chunks = p.dim / kRun, seq = 2 * p.n;
  const std::int64_t total = p.batch * seq * p.heads * chunks;
  for (std::int64_t e = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; e < total;
       e += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t chunk = e % chunks, row = e / chunks;  // row of [b, 2n, h]
    const std::int64_t h = row % p.heads, i = (row / p.heads) % seq, b = row / (p.heads * seq);
    const std::int64_t bh = b * p.heads + h;
    const float l1 = part_lse(stats_a, stats_c, bh, i, p.n, p.block);
    const float l2 = lse_local[bh * seq + i];
    const float m = fmaxf(l1, l2);
    const float total_lse = m + logf(expf(l1 - m) + expf(l2 - m));
    const float w1 = expf(l1 - total_lse), w2 = expf(l2 - total_lse);
    const std::int64_t at = row * p.dim + chunk * kRun;
    float a[kRun] = {}, c[kRun] = {}, x[kRun];
    if (w1 > 0.0f) load_run<kRun>(out + at, a);
    if (w2 > 0.0f) load_run<kRun>(out_local + at, c);
#pragma unroll
    for (int j = 0; j < kRun; ++j)
      x[j] = (w1 > 0.0f ? w1 * a[j] : 0.0f) + (w2 > 0.0f ? w2 * c[j] : 0.0f);
    store_run<kRun>(out + at, x);
    if (chunk == 0) lse[bh * seq + i] = total_lse;
  }
}

// The merged lse of part A's and C's rows, packed as cuDNN reads its statistics.
__global__ void gather_part_lse_kernel(const float* lse, Parts p, float* stats_a, float* stats_c) {
  const std::int64_t seq = 2 * p.n, shifted = p.shifted();
  const std::int64_t per_head = p.n + (shifted > 0 ? shifted : 0);
  const std::int64_t total = p.batch * p.heads * per_head;
  for (std::int64_t e = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; e < total;
       e += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t bh = e / per_head, j = e % per_head;
    if (j < p.n)
      stats_a[bh * p.n + j] = lse[bh * seq + p.n + j];
    else
      stats_c[bh * shifted + (j - p.n)] = lse[bh * seq + p.block + (j - p.n)];
  }
}

// grad (part L's, whole) += part A's and C's: dq rows from min(block, n) on take dq_parts' same
// rows (C's noisy rows, if any, then A's clean ones); the clean rows of dk/dv take part A's (same
// rows) and part C's (the first n - block rows of kv_parts hold them, for clean keys 0 ..
// n - block).
__global__ void add_parts_kernel(const bf16* q_parts, const bf16* k_parts, const bf16* v_parts,
                                 Parts p, bf16* dq, bf16* dk, bf16* dv) {
  const std::int64_t chunks_q = p.heads * p.dim / kRun, chunks_kv = p.kv_heads * p.dim / kRun;
  const std::int64_t seq = 2 * p.n, first = p.block < p.n ? p.block : p.n;
  const std::int64_t q_items = p.batch * (seq - first) * chunks_q;
  const std::int64_t kv_items = p.batch * p.n * chunks_kv;
  for (std::int64_t e = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; e < q_items + kv_items;
       e += std::int64_t{gridDim.x} * blockDim.x) {
    float acc[kRun], x[kRun], y[kRun];
    if (e < q_items) {
      const std::int64_t c = e % chunks_q, r = e / chunks_q;
      const std::int64_t b = r / (seq - first), i = first + r % (seq - first);
      const std::int64_t at = (b * seq + i) * chunks_q * kRun + c * kRun;
      load_run<kRun>(dq + at, acc);
      load_run<kRun>(q_parts + at, x);
#pragma unroll
      for (int j = 0; j < kRun; ++j) acc[j] += x[j];
      store_run<kRun>(dq + at, acc);
      continue;
    }
    const std::int64_t f = e - q_items;
    const std::int64_t c = f % chunks_kv, r = f / chunks_kv;
    const std::int64_t b = r / p.n, j = r % p.n;  // clean key j, row n + j
    const std::int64_t width = chunks_kv * kRun;
    const std::int64_t at = (b * seq + p.n + j) * width + c * kRun;
    const std::int64_t shifted_at = (b * seq + j) * width + c * kRun;
    const bool in_c = j < p.shifted();
    for (int which = 0; which < 2; ++which) {
      bf16* grad = which == 0 ? dk : dv;
      const bf16* parts = which == 0 ? k_parts : v_parts;
      load_run<kRun>(grad + at, acc);
      load_run<kRun>(parts + at, x);
      if (in_c) load_run<kRun>(parts + shifted_at, y);
#pragma unroll
      for (int k = 0; k < kRun; ++k) {
        acc[k] += x[k];
        if (in_c) acc[k] += y[k];
      }
      store_run<kRun>(grad + at, acc);
    }
  }
}

}  // namespace

bool block_diffusion_attention_forward(CudnnAttention& cudnn, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const AttentionMask& mask, float scale,
                                       const Geometry& g, Tensor& out, Tensor& lse, Arena& arena) {
  Parts p{};
  if (q.dtype() != DType::bf16 || !cudnn.use().forward || !parts_of(mask, g, p)) return false;
  if (!cudnn_has_parts(cudnn, p, /*backward=*/false, q, k, v)) return false;
  Tensor out_local = Tensor::empty(q.shape(), DType::bf16, arena);
  Tensor lse_local = Tensor::empty(lse.shape(), DType::f32, arena);
  if (!attention_forward_tensor_cores(q, k, v, local_mask(mask), scale, g, out_local, lse_local))
    return false;
  Tensor stats_a = Tensor::empty({p.batch, p.heads, p.n}, DType::f32, arena);
  Tensor stats_c =
      Tensor::empty({p.batch, p.heads, std::max<std::int64_t>(p.shifted(), 1)}, DType::f32, arena);
  for (const bool clean_part : {true, false}) {
    if (!clean_part && p.shifted() <= 0) break;
    CudnnAttentionViews views = part_views(p, clean_part, q, k, v);
    views.out = rows<bf16>(out, part_row(p, clean_part), p.heads * p.dim);
    views.stats = static_cast<float*>((clean_part ? stats_a : stats_c).raw());
    if (!cudnn.forward(views, scale)) return false;
  }
  merge_forward_kernel<<<grid_for(p.batch * 2 * p.n * p.heads * p.dim / kRun), kThreads>>>(
      cptr<bf16>(out_local), cptr<float>(lse_local), cptr<float>(stats_a), cptr<float>(stats_c), p,
      mptr<bf16>(out), mptr<float>(lse));
  MM_CUDA_CHECK_LAUNCH();
  return true;
}

bool block_diffusion_attention_backward(CudnnAttention& cudnn, const Tensor& dout, const Tensor& q,
                                        const Tensor& k, const Tensor& v, const Tensor& out,
                                        const Tensor& lse, const Tensor& delta,
                                        const AttentionMask& mask, float scale, const Geometry& g,
                                        Tensor& dq, Tensor& dk, Tensor& dv, Arena& arena,
                                        bool atomic_dq) {
  Parts p{};
  if (q.dtype() != DType::bf16 || !cudnn.use().backward || !parts_of(mask, g, p)) return false;
  if (!cudnn_has_parts(cudnn, p, /*backward=*/true, q, k, v)) return false;
  if (!attention_backward_tensor_cores(dout, q, k, v, lse, delta, local_mask(mask), scale, g, dq,
                                       dk, dv, arena, atomic_dq))
    return false;
  const std::int64_t qw = p.heads * p.dim, kw = p.kv_heads * p.dim;
  Tensor stats_a = Tensor::empty({p.batch, p.heads, p.n}, DType::f32, arena);
  Tensor stats_c =
      Tensor::empty({p.batch, p.heads, std::max<std::int64_t>(p.shifted(), 1)}, DType::f32, arena);
  gather_part_lse_kernel<<<grid_for(p.batch * p.heads * 2 * p.n), kThreads>>>(
      cptr<float>(lse), p, mptr<float>(stats_a), mptr<float>(stats_c));
  MM_CUDA_CHECK_LAUNCH();
  // Part A's gradients land in the clean rows, part C's dq in the noisy rows from `block` on and
  // its dk/dv in the noisy rows' storage (free: no part writes there).
  Tensor dq_parts = Tensor::empty(q.shape(), DType::bf16, arena);
  Tensor dk_parts = Tensor::empty(k.shape(), DType::bf16, arena);
  Tensor dv_parts = Tensor::empty(v.shape(), DType::bf16, arena);
  for (const bool clean_part : {true, false}) {
    if (!clean_part && p.shifted() <= 0) break;
    CudnnAttentionViews views = part_views(p, clean_part, q, k, v);
    const std::int64_t q_row = part_row(p, clean_part), kv_out_row = clean_part ? p.n : 0;
    views.out = const_cast<bf16*>(rows<bf16>(out, q_row, qw));
    views.dout = rows<bf16>(dout, q_row, qw);
    views.stats = static_cast<float*>((clean_part ? stats_a : stats_c).raw());
    views.dq = rows<bf16>(dq_parts, q_row, qw);
    views.dk = rows<bf16>(dk_parts, kv_out_row, kw);
    views.dv = rows<bf16>(dv_parts, kv_out_row, kw);
    if (!cudnn.backward(views, scale)) return false;
  }
  add_parts_kernel<<<grid_for(p.batch * 2 * p.n * (p.heads + 2 * p.kv_heads) * p.dim / kRun),
                     kThreads>>>(cptr<bf16>(dq_parts), cptr<bf16>(dk_parts), cptr<bf16>(dv_parts),
                                 p, mptr<bf16>(dq), mptr<bf16>(dk), mptr<bf16>(dv));
  MM_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace metamorph::cuda

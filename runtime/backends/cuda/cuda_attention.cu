// Attention of the CUDA backend, flash-attention style. Forward: one block per (query tile,
// batch*head) streams key tiles through shared memory with an online softmax and saves the
// log-sum-exp. Backward recomputes the probabilities from lse: one kernel accumulates dq per query
// tile, another dk/dv per key tile (looping over the query heads of its GQA group in order), so
// no gradient is ever combined with atomics and the result is the same bits every run. Key tiles
// outside every row's allowed ranges (attention_key_ranges.hpp, shared with the CPU backend) are
// skipped; inside a tile each element is checked against the row's ranges.
//
// Training shapes in scope of cuDNN's fused attention go there first when the library loads
// (cudnn_attention.hpp); the rest of bf16 with head_dim 64 or 128 (the models' case) goes to the
// tensor-core kernels of cuda_attention_mma*.cu. Everything else runs the kernels here, which
// compute with f32 FMAs on the CUDA cores: four threads share a row (each holds a quarter of the
// head dimension) and combine dot products by warp shuffles; correct for any mask, offset, GQA
// ratio, f32 or bf16 and head_dim <= 256, but about a tenth of the tensor-core speed.
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "runtime/backends/cpu/attention_key_ranges.hpp"
#include "runtime/backends/cuda/cuda_attention_common.cuh"
#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_block_diffusion_attention.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

constexpr int kLanesPerRow = 4;
constexpr int kRowsPerBlock = kThreads / kLanesPerRow;  // 64 query rows (forward, dq) or keys
constexpr int kKeyTile = 32;                            // keys per shared-memory tile (forward, dq)
constexpr int kQueryTile = 32;                          // queries per tile (dk/dv)
constexpr float kNegInf = -INFINITY;

__device__ __forceinline__ float lane_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// rows x (kLanesPerRow * DPT) floats of a [*, rows_total, heads_total, dim] tensor into shared
// memory, zero past the end of the sequence and past dim.
template <int DPT, class T>
__device__ void load_tile(float* tile, int rows, const T* base, std::int64_t first_row,
                          std::int64_t rows_total, std::int64_t row_stride, std::int64_t dim) {
  constexpr int width = kLanesPerRow * DPT;
  for (int e = threadIdx.x; e < rows * width; e += blockDim.x) {
    const int r = e / width, c = e % width;
    const std::int64_t row = first_row + r;
    tile[e] = row < rows_total && c < dim ? to_float(base[row * row_stride + c]) : 0.0f;
  }
}

template <class T, int DPT>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const T* q, const T* k, const T* v, AttentionMask mask, float scale,
                             Geometry g, T* out, float* lse) {
  constexpr int width = kLanesPerRow * DPT;
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = smem + kKeyTile * width;
  __shared__ Hull hull;

  const int row_in_tile = threadIdx.x / kLanesPerRow, lane = threadIdx.x % kLanesPerRow;
  const std::int64_t bh = blockIdx.y, b = bh / g.heads, h = bh % g.heads, kvh = h / g.group;
  const std::int64_t i = std::int64_t{blockIdx.x} * kRowsPerBlock + row_in_tile;
  const bool active = i < g.sq;
  const std::int64_t kv_stride = g.kv_heads * g.dim;

  AllowedKeys keys{};
  if (active) keys = allowed_keys(mask, g.q_offset + i, g.sk);
  if (threadIdx.x == 0) hull.reset();
  __syncthreads();
  if (active && lane == 0) hull.extend(keys);
  __syncthreads();

  float qr[DPT], acc[DPT];
  const T* qrow = q + ((b * g.sq + (active ? i : 0)) * g.heads + h) * g.dim;
#pragma unroll
  for (int j = 0; j < DPT; ++j) {
    const std::int64_t c = lane + kLanesPerRow * j;
    qr[j] = active && c < g.dim ? to_float(qrow[c]) : 0.0f;
    acc[j] = 0.0f;
  }
  float m = kNegInf, l = 0.0f;
  const T* kbase = k + (b * g.sk * g.kv_heads + kvh) * g.dim;
  const T* vbase = v + (b * g.sk * g.kv_heads + kvh) * g.dim;

  for (std::int64_t k0 = 0; k0 < g.sk; k0 += kKeyTile) {
    if (!hull.touches(k0, k0 + kKeyTile)) continue;  // uniform over the block
    // The previous tile is no longer read.
    __syncthreads();
    load_tile<DPT>(ks, kKeyTile, kbase, k0, g.sk, kv_stride, g.dim);
    load_tile<DPT>(vs, kKeyTile, vbase, k0, g.sk, kv_stride, g.dim);
    __syncthreads();
    float s[kKeyTile];
    float tile_max = kNegInf;
#pragma unroll
    for (int kk = 0; kk < kKeyTile; ++kk) {
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < DPT; ++j) dot += qr[j] * ks[kk * width + lane + kLanesPerRow * j];
      dot = lane_sum(dot);
      s[kk] = allowed(keys, k0 + kk) ? dot * scale : kNegInf;
      tile_max = fmaxf(tile_max, s[kk]);
    }
    const float new_m = fmaxf(m, tile_max);
    if (new_m == kNegInf) continue;  // nothing allowed yet for this row
    const float correction = __expf(m - new_m);
    l *= correction;
#pragma unroll
    for (int j = 0; j < DPT; ++j) acc[j] *= correction;
#pragma unroll
    for (int kk = 0; kk < kKeyTile; ++kk) {
      const float p = __expf(s[kk] - new_m);
      l += p;
#pragma unroll
      for (int j = 0; j < DPT; ++j) acc[j] += p * vs[kk * width + lane + kLanesPerRow * j];
    }
    m = new_m;
  }
  if (!active) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  T* orow = out + ((b * g.sq + i) * g.heads + h) * g.dim;
#pragma unroll
  for (int j = 0; j < DPT; ++j) {
    const std::int64_t c = lane + kLanesPerRow * j;
    if (c < g.dim) orow[c] = from_float<T>(acc[j] * inv);
  }
  if (lane == 0) lse[(b * g.heads + h) * g.sq + i] = l > 0.0f ? m + logf(l) : kNegInf;
}

// delta[b, h, i] = sum_d dout * out, the softmax-backward row term.
template <class T>
__global__ void attention_delta_kernel(const T* dout, const T* out, Geometry g, float* delta) {
  const std::int64_t rows = g.batch * g.sq * g.heads;
  for (std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; r < rows;
       r += std::int64_t{gridDim.x} * blockDim.x) {
    float sum = 0.0f;
    for (std::int64_t c = 0; c < g.dim; ++c)
      sum += to_float(dout[r * g.dim + c]) * to_float(out[r * g.dim + c]);
    const std::int64_t h = r % g.heads, bi = r / g.heads, i = bi % g.sq, b = bi / g.sq;
    delta[(b * g.heads + h) * g.sq + i] = sum;
  }
}

// The same for bf16 rows of kRun * L elements: L lanes share a row, each reading 16 bytes at a time
// (the plain kernel's one thread a row reads memory 2 * head_dim bytes apart across a warp).
template <int L>
__global__ void attention_delta_bf16_kernel(const bf16* dout, const bf16* out, Geometry g,
                                            float* delta) {
  const std::int64_t rows = g.batch * g.sq * g.heads;
  const int lane = static_cast<int>(threadIdx.x % L);
  // Only the row's L lanes meet in the shuffles: neighbouring rows may end the loop earlier.
  const unsigned row_lanes = (L == 32 ? 0xffffffffu : (1u << L) - 1u)
                             << (static_cast<int>(threadIdx.x % 32) / L * L);
  for (std::int64_t r = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / L; r < rows;
       r += std::int64_t{gridDim.x} * blockDim.x / L) {
    float sum = 0.0f;
    for (std::int64_t c = lane * kRun; c < g.dim; c += kRun * L) {
      float a[kRun], b[kRun];
      load_run<kRun>(dout + r * g.dim + c, a);
      load_run<kRun>(out + r * g.dim + c, b);
#pragma unroll
      for (int j = 0; j < kRun; ++j) sum += a[j] * b[j];
    }
#pragma unroll
    for (int offset = L / 2; offset > 0; offset /= 2)
      sum += __shfl_xor_sync(row_lanes, sum, offset);
    const std::int64_t h = r % g.heads, bi = r / g.heads, i = bi % g.sq, b = bi / g.sq;
    if (lane == 0) delta[(b * g.heads + h) * g.sq + i] = sum;
  }
}

// delta for every row: the 16-byte kernel where bf16 rows are whole runs of it and aligned.
template <class T>
void launch_attention_delta(const T* dout, const T* out, const Geometry& g, float* delta) {
  const std::int64_t rows = g.batch * g.sq * g.heads;
  if constexpr (std::is_same_v<T, bf16>) {
    const bool runs = aligned16(dout, out);
    if (runs && g.dim % (16 * kRun) == 0) {
      attention_delta_bf16_kernel<16><<<grid_for(rows * 16), kThreads>>>(dout, out, g, delta);
      MM_CUDA_CHECK_LAUNCH();
      return;
    }
    if (runs && g.dim % (8 * kRun) == 0) {
      attention_delta_bf16_kernel<8><<<grid_for(rows * 8), kThreads>>>(dout, out, g, delta);
      MM_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  attention_delta_kernel<<<grid_for(rows), kThreads>>>(dout, out, g, delta);
  MM_CUDA_CHECK_LAUNCH();
}

template <class T, int DPT>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse,
                        const float* delta, AttentionMask mask, float scale, Geometry g, T* dq) {
  constexpr int width = kLanesPerRow * DPT;
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = smem + kKeyTile * width;
  __shared__ Hull hull;

  const int row_in_tile = threadIdx.x / kLanesPerRow, lane = threadIdx.x % kLanesPerRow;
  const std::int64_t bh = blockIdx.y, b = bh / g.heads, h = bh % g.heads, kvh = h / g.group;
  const std::int64_t i = std::int64_t{blockIdx.x} * kRowsPerBlock + row_in_tile;
  const bool active = i < g.sq;
  const std::int64_t kv_stride = g.kv_heads * g.dim;

  AllowedKeys keys{};
  if (active) keys = allowed_keys(mask, g.q_offset + i, g.sk);
  if (threadIdx.x == 0) hull.reset();
  __syncthreads();
  if (active && lane == 0) hull.extend(keys);
  __syncthreads();

  float qr[DPT], dor[DPT], acc[DPT];
  const std::int64_t row_offset = ((b * g.sq + (active ? i : 0)) * g.heads + h) * g.dim;
#pragma unroll
  for (int j = 0; j < DPT; ++j) {
    const std::int64_t c = lane + kLanesPerRow * j;
    qr[j] = active && c < g.dim ? to_float(q[row_offset + c]) : 0.0f;
    dor[j] = active && c < g.dim ? to_float(dout[row_offset + c]) : 0.0f;
    acc[j] = 0.0f;
  }
  const std::int64_t stat = (b * g.heads + h) * g.sq + (active ? i : 0);
  const float row_lse = active ? lse[stat] : kNegInf;
  const float row_delta = active ? delta[stat] : 0.0f;
  const T* kbase = k + (b * g.sk * g.kv_heads + kvh) * g.dim;
  const T* vbase = v + (b * g.sk * g.kv_heads + kvh) * g.dim;

  for (std::int64_t k0 = 0; k0 < g.sk; k0 += kKeyTile) {
    if (!hull.touches(k0, k0 + kKeyTile)) continue;
    __syncthreads();
    load_tile<DPT>(ks, kKeyTile, kbase, k0, g.sk, kv_stride, g.dim);
    load_tile<DPT>(vs, kKeyTile, vbase, k0, g.sk, kv_stride, g.dim);
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kKeyTile; ++kk) {
      float qk = 0.0f, dpv = 0.0f;
#pragma unroll
      for (int j = 0; j < DPT; ++j) {
        qk += qr[j] * ks[kk * width + lane + kLanesPerRow * j];
        dpv += dor[j] * vs[kk * width + lane + kLanesPerRow * j];
      }
      qk = lane_sum(qk);
      dpv = lane_sum(dpv);
      const bool on = row_lse != kNegInf && allowed(keys, k0 + kk);
      const float p = on ? __expf(qk * scale - row_lse) : 0.0f;
      const float ds = p * (dpv - row_delta);
#pragma unroll
      for (int j = 0; j < DPT; ++j) acc[j] += ds * ks[kk * width + lane + kLanesPerRow * j];
    }
  }
  if (!active) return;
#pragma unroll
  for (int j = 0; j < DPT; ++j) {
    const std::int64_t c = lane + kLanesPerRow * j;
    if (c < g.dim) dq[row_offset + c] = from_float<T>(acc[j] * scale);
  }
}

template <class T, int DPT>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse,
                          const float* delta, AttentionMask mask, float scale, Geometry g, T* dk,
                          T* dv) {
  constexpr int width = kLanesPerRow * DPT;
  extern __shared__ float smem[];
  float* qs = smem;
  float* dos = smem + kQueryTile * width;
  __shared__ Hull hull;
  __shared__ AllowedKeys row_keys[kQueryTile];
  __shared__ float lse_s[kQueryTile], delta_s[kQueryTile];

  const int key_in_tile = threadIdx.x / kLanesPerRow, lane = threadIdx.x % kLanesPerRow;
  const std::int64_t bkv = blockIdx.y, b = bkv / g.kv_heads, kvh = bkv % g.kv_heads;
  const std::int64_t k0 = std::int64_t{blockIdx.x} * kRowsPerBlock;
  const std::int64_t key = k0 + key_in_tile;
  const bool active = key < g.sk;
  const std::int64_t q_stride = g.heads * g.dim;
  const std::int64_t kv_offset = ((b * g.sk + (active ? key : 0)) * g.kv_heads + kvh) * g.dim;

  float kr[DPT], vr[DPT], dka[DPT], dva[DPT];
#pragma unroll
  for (int j = 0; j < DPT; ++j) {
    const std::int64_t c = lane + kLanesPerRow * j;
    kr[j] = active && c < g.dim ? to_float(k[kv_offset + c]) : 0.0f;
    vr[j] = active && c < g.dim ? to_float(v[kv_offset + c]) : 0.0f;
    dka[j] = 0.0f;
    dva[j] = 0.0f;
  }

  for (std::int64_t h = kvh * g.group; h < (kvh + 1) * g.group; ++h) {
    const T* qbase = q + (b * g.sq * g.heads + h) * g.dim;
    const T* dobase = dout + (b * g.sq * g.heads + h) * g.dim;
    for (std::int64_t q0 = 0; q0 < g.sq; q0 += kQueryTile) {
      __syncthreads();  // the previous tile's shared data is no longer read
      if (threadIdx.x == 0) hull.reset();
      __syncthreads();
      if (threadIdx.x < kQueryTile) {
        const std::int64_t i = q0 + threadIdx.x;
        AllowedKeys keys{};
        float row_lse = kNegInf, row_delta = 0.0f;
        if (i < g.sq) {
          keys = allowed_keys(mask, g.q_offset + i, g.sk);
          row_lse = lse[(b * g.heads + h) * g.sq + i];
          row_delta = delta[(b * g.heads + h) * g.sq + i];
          hull.extend(keys);
        }
        row_keys[threadIdx.x] = keys;
        lse_s[threadIdx.x] = row_lse;
        delta_s[threadIdx.x] = row_delta;
      }
      __syncthreads();
      if (!hull.touches(k0, k0 + kRowsPerBlock)) continue;  // uniform over the block
      load_tile<DPT>(qs, kQueryTile, qbase, q0, g.sq, q_stride, g.dim);
      load_tile<DPT>(dos, kQueryTile, dobase, q0, g.sq, q_stride, g.dim);
      __syncthreads();
#pragma unroll 4
      for (int qq = 0; qq < kQueryTile; ++qq) {
        float qk = 0.0f, dpv = 0.0f;
#pragma unroll
        for (int j = 0; j < DPT; ++j) {
          qk += kr[j] * qs[qq * width + lane + kLanesPerRow * j];
          dpv += vr[j] * dos[qq * width + lane + kLanesPerRow * j];
        }
        qk = lane_sum(qk);
        dpv = lane_sum(dpv);
        const float row_lse = lse_s[qq];
        const bool on = active && row_lse != kNegInf && allowed(row_keys[qq], key);
        const float p = on ? __expf(qk * scale - row_lse) : 0.0f;
        const float ds = p * (dpv - delta_s[qq]);
#pragma unroll
        for (int j = 0; j < DPT; ++j) {
          dva[j] += p * dos[qq * width + lane + kLanesPerRow * j];
          dka[j] += ds * qs[qq * width + lane + kLanesPerRow * j];
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int j = 0; j < DPT; ++j) {
    const std::int64_t c = lane + kLanesPerRow * j;
    if (c < g.dim) {
      dk[kv_offset + c] = from_float<T>(dka[j] * scale);
      dv[kv_offset + c] = from_float<T>(dva[j]);
    }
  }
}

Geometry geometry(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                  const Tensor& lse, const AttentionMask& mask, float scale,
                  std::int64_t q_offset) {
  check_all_on_device("attention", q, k, v, out, lse);
  MM_ASSERT(q.rank() == 4 && k.rank() == 4 && k.shape() == v.shape(),
            "attention wants q [b, sq, h, d], k/v [b, sk, hk, d]; got q ", shape_string(q.shape()),
            " k ", shape_string(k.shape()), " v ", shape_string(v.shape()));
  Geometry g{};
  g.batch = q.dim(0);
  g.sq = q.dim(1);
  g.heads = q.dim(2);
  g.dim = q.dim(3);
  g.sk = k.dim(1);
  g.kv_heads = k.dim(2);
  MM_ASSERT(k.dim(0) == g.batch && k.dim(3) == g.dim && g.dim > 0, "attention q ",
            shape_string(q.shape()), " vs k ", shape_string(k.shape()));
  MM_ASSERT(out.shape() == q.shape() && lse.shape() == (Shape{g.batch, g.heads, g.sq}) &&
                lse.dtype() == DType::f32,
            "attention out ", shape_string(out.shape()), " lse ", shape_string(lse.shape()),
            " for q ", shape_string(q.shape()));
  for (const Tensor* t : {&k, &v, static_cast<const Tensor*>(&out)})
    MM_ASSERT(t->dtype() == q.dtype(),
              "attention tensors share one dtype: ", dtype_name(t->dtype()), " vs ",
              dtype_name(q.dtype()));
  require(g.kv_heads >= 1 && g.heads % g.kv_heads == 0, "attention query heads ", g.heads,
          " must be a multiple of the key/value heads ", g.kv_heads);
  require(q_offset >= 0, "attention query offset ", q_offset, " must be >= 0");
  require(std::isfinite(scale), "attention scale ", scale, " must be finite");
  require(g.dim <= 256, "the CUDA attention kernels support head_dim <= 256, got ", g.dim);
  validate_mask(mask);
  MM_ASSERT(g.batch * g.heads < 65536, "attention batch*heads ", g.batch * g.heads);
  g.group = g.heads / g.kv_heads;
  g.q_offset = q_offset;
  return g;
}

// Calls fn(std::integral_constant<int, DPT>) with the smallest dims-per-lane fitting head_dim.
template <class Fn>
void dispatch_head_dim(std::int64_t dim, Fn&& fn) {
  if (dim <= 16)
    fn(std::integral_constant<int, 4>{});
  else if (dim <= 64)
    fn(std::integral_constant<int, 16>{});
  else if (dim <= 128)
    fn(std::integral_constant<int, 32>{});
  else
    fn(std::integral_constant<int, 64>{});
}

// Raises a kernel's dynamic shared-memory limit past the 48 KiB default when it needs more.
template <class Kernel>
void allow_shared(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    MM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
}

}  // namespace

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionMask& mask, float scale, Tensor& out,
                                    Tensor& lse, std::int64_t q_offset) {
  const Geometry g = geometry(q, k, v, out, lse, mask, scale, q_offset);
  if (g.batch * g.heads * g.sq == 0) return;
  if (block_diffusion_attention_forward(cudnn_attention_, q, k, v, mask, scale, g, out, lse,
                                        arena_))
    return;
  // Block diffusion reaches cuDNN only in parts (above); the whole mask is outside its graphs.
  if (mask.kind != MaskKind::block_diffusion &&
      cudnn_attention_.forward(q, k, v, mask, scale, out, lse, q_offset))
    return;
  if (attention_forward_tensor_cores(q, k, v, mask, scale, g, out, lse)) return;
  const dim3 grid(static_cast<unsigned>((g.sq + kRowsPerBlock - 1) / kRowsPerBlock),
                  static_cast<unsigned>(g.batch * g.heads));
  dispatch_float(q.dtype(), "attention_forward", [&](auto t) {
    using T = decltype(t);
    dispatch_head_dim(g.dim, [&](auto dpt) {
      constexpr int DPT = decltype(dpt)::value;
      const std::size_t shared = 2 * kKeyTile * kLanesPerRow * DPT * sizeof(float);
      auto kernel = attention_forward_kernel<T, DPT>;
      allow_shared(kernel, shared);
      kernel<<<grid, kThreads, shared>>>(cptr<T>(q), cptr<T>(k), cptr<T>(v), mask, scale, g,
                                         mptr<T>(out), mptr<float>(lse));
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& out, const Tensor& lse,
                                     const AttentionMask& mask, float scale, Tensor& dq, Tensor& dk,
                                     Tensor& dv, std::int64_t q_offset) {
  const Geometry g = geometry(q, k, v, out, lse, mask, scale, q_offset);
  check_all_on_device("attention_backward", dout, dq, dk, dv);
  MM_ASSERT(dout.shape() == q.shape() && dq.shape() == q.shape() && dk.shape() == k.shape() &&
                dv.shape() == v.shape(),
            "attention_backward dout ", shape_string(dout.shape()), " dq ",
            shape_string(dq.shape()), " dk ", shape_string(dk.shape()), " dv ",
            shape_string(dv.shape()));
  for (const Tensor* t : {&dout, static_cast<const Tensor*>(&dq), static_cast<const Tensor*>(&dk),
                          static_cast<const Tensor*>(&dv)})
    MM_ASSERT(t->dtype() == q.dtype(), "attention_backward tensors share one dtype");
  if (g.batch * g.kv_heads * g.sk > 0 && g.sq == 0) {
    fill(dk, 0.0f);
    fill(dv, 0.0f);
  }
  if (g.batch * g.heads * g.sq == 0) return;
  // cuDNN computes its own dO.O row sums; its lse convention is ours (cudnn_attention.hpp).
  if (mask.kind != MaskKind::block_diffusion &&
      cudnn_attention_.backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv, q_offset))
    return;
  Tensor delta = empty({g.batch, g.heads, g.sq});
  dispatch_float(q.dtype(), "attention_backward", [&](auto t) {
    using T = decltype(t);
    launch_attention_delta(cptr<T>(dout), cptr<T>(out), g, mptr<float>(delta));
    if (block_diffusion_attention_backward(cudnn_attention_, dout, q, k, v, out, lse, delta, mask,
                                           scale, g, dq, dk, dv, arena_, !deterministic_))
      return;
    if (attention_backward_tensor_cores(dout, q, k, v, lse, delta, mask, scale, g, dq, dk, dv,
                                        arena_, !deterministic_))
      return;
    dispatch_head_dim(g.dim, [&](auto dpt) {
      constexpr int DPT = decltype(dpt)::value;
      const std::size_t shared = 2 * kKeyTile * kLanesPerRow * DPT * sizeof(float);
      auto dq_kernel = attention_dq_kernel<T, DPT>;
      allow_shared(dq_kernel, shared);
      const dim3 dq_grid(static_cast<unsigned>((g.sq + kRowsPerBlock - 1) / kRowsPerBlock),
                         static_cast<unsigned>(g.batch * g.heads));
      dq_kernel<<<dq_grid, kThreads, shared>>>(cptr<T>(dout), cptr<T>(q), cptr<T>(k), cptr<T>(v),
                                               cptr<float>(lse), cptr<float>(delta), mask, scale, g,
                                               mptr<T>(dq));
      MM_CUDA_CHECK_LAUNCH();
      if (g.sk == 0) return;
      auto dkdv_kernel = attention_dkdv_kernel<T, DPT>;
      const std::size_t dkdv_shared = 2 * kQueryTile * kLanesPerRow * DPT * sizeof(float);
      allow_shared(dkdv_kernel, dkdv_shared);
      const dim3 dkdv_grid(static_cast<unsigned>((g.sk + kRowsPerBlock - 1) / kRowsPerBlock),
                           static_cast<unsigned>(g.batch * g.kv_heads));
      dkdv_kernel<<<dkdv_grid, kThreads, dkdv_shared>>>(
          cptr<T>(dout), cptr<T>(q), cptr<T>(k), cptr<T>(v), cptr<float>(lse), cptr<float>(delta),
          mask, scale, g, mptr<T>(dk), mptr<T>(dv));
      MM_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace metamorph::cuda

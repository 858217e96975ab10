// Attention forward on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate), the
// flash-attention-2 scheme: a block of 4 warps owns 64 query rows (16 per warp; 128 rows, 32 per
// warp, at head_dim 64: see m_tiles; their Q fragments held in registers), streams 64-key tiles of
// K and V through shared memory, computes S = Q K^T and O += P V with mma.sync and keeps the online
// softmax in the log2 domain. Masking, tile skipping, GQA and q_offset work as in the CUDA-core
// kernels (cuda_attention.cu); rows with no allowed key give out = 0 and lse = -inf like the CPU
// reference. P is rounded to bf16 before P V, as flash attention does.
//
// Latency: K/V tiles are double-buffered with cp.async (the next touched tile loads while this
// one is computed; with two blocks per SM a synchronous load left the schedulers idle 82% of the
// time), and a warp whose 16 rows allow the whole tile skips the per-element mask test. Blocks
// start with the last query tiles, the longest under a causal mask, so the grid's tail is short.
// Measured alternatives (docs/benchmarks.md): at head_dim 128, two m-tiles per warp with Q
// fragments re-read from shared memory, and 32-key tiles, were both slower on causal shapes. Not
// yet: wgmma, TMA.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "runtime/backends/cuda/cuda_attention_common.cuh"
#include "runtime/backends/cuda/cuda_mma.cuh"

namespace metamorph::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kBlockKeys = 64;  // keys per shared-memory tile

// How many 16-row m-tiles a warp owns. Every warp reads the whole K and V tile from shared memory
// for its rows, so with one m-tile each ldmatrix feeds two mma and shared memory, not the tensor
// cores, sets the pace; two m-tiles halve that. At head_dim 128 two m-tiles' Q fragments and
// accumulators would not fit in registers; at 64 they do.
template <int D>
constexpr int m_tiles() {
  return D == 64 ? 2 : 1;
}
template <int D>
constexpr int block_rows() {
  return 16 * kWarps * m_tiles<D>();  // query rows per block
}

// A row's allowed key ranges in 32 bits (the launcher checks that keys fit): at two m-tiles the
// 64-bit AllowedKeys of a warp's four rows cost 16 registers more than there are. At one m-tile
// the kernel keeps AllowedKeys: measured, the 32-bit form made the head_dim-128 kernel 10-13%
// slower (fewer registers, a different schedule).
struct RowKeys {
  int begin[2], end[2];
  __device__ RowKeys() : begin{0, 0}, end{0, 0} {}
  __device__ explicit RowKeys(const AllowedKeys& k)
      : begin{static_cast<int>(k.first.begin), static_cast<int>(k.second.begin)},
        end{static_cast<int>(k.first.end), static_cast<int>(k.second.end)} {}
};
__device__ __forceinline__ bool allowed(const RowKeys& keys, std::int64_t key) {
  return (key >= keys.begin[0] && key < keys.end[0]) || (key >= keys.begin[1] && key < keys.end[1]);
}
__device__ __forceinline__ bool covers(const RowKeys& keys, std::int64_t first, std::int64_t last) {
  return (keys.begin[0] <= first && last <= keys.end[0]) ||
         (keys.begin[1] <= first && last <= keys.end[1]);
}
using cuda::allowed;  // the AllowedKeys forms (cuda_attention_common.cuh), beside these
using cuda::covers;
template <int MT>
using KeysOf = std::conditional_t<(MT > 1), RowKeys, AllowedKeys>;

template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    attention_forward_mma_kernel(const bf16* q, const bf16* k, const bf16* v, AttentionMask mask,
                                 float scale, Geometry g, bf16* out, float* lse) {
  constexpr int MT = m_tiles<D>();
  constexpr int kBlockRows = block_rows<D>();
  constexpr int stride = D + 8;  // padded rows: fragment loads hit 32 distinct banks
  constexpr int tile = kBlockKeys * stride;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  bf16* qs = reinterpret_cast<bf16*>(smem_bytes);
  bf16* ks = qs + kBlockRows * stride;  // two buffers
  bf16* vs = ks + 2 * tile;             // two buffers
  __shared__ Hull hull;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  const std::int64_t bh = blockIdx.y, b = bh / g.heads, h = bh % g.heads, kvh = h / g.group;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kBlockRows;
  const int warp_row0 = warp * 16 * MT;  // the warp's first row in the block
  KeysOf<MT> keys[MT][2] = {};
  if (threadIdx.x == 0) hull.reset();
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const std::int64_t row = q0 + warp_row0 + mt * 16 + group + 8 * r;
      if (row >= g.sq) continue;
      const AllowedKeys allowed_here = allowed_keys(mask, g.q_offset + row, g.sk);
      keys[mt][r] = KeysOf<MT>(allowed_here);
      if (quad == 0) hull.extend(allowed_here);
    }
  __syncthreads();

  const int sq = static_cast<int>(g.sq), sk = static_cast<int>(g.sk);
  const int q_stride = static_cast<int>(g.heads * D), kv_stride = static_cast<int>(g.kv_heads * D);
  const bf16* kbase = k + (b * g.sk * g.kv_heads + kvh) * D;
  const bf16* vbase = v + (b * g.sk * g.kv_heads + kvh) * D;
  auto load_tile = [&](int k0, int buf) {
    load_rows_async<D>(ks + buf * tile, kBlockKeys, stride, kbase, k0, sk, kv_stride);
    load_rows_async<D>(vs + buf * tile, kBlockKeys, stride, vbase, k0, sk, kv_stride);
  };

  load_rows_async<D>(qs, kBlockRows, stride, q + (b * g.sq * g.heads + h) * D, q0, sq, q_stride);
  cp_async_commit();
  int k0 = hull.next_tile(0, kBlockKeys, sk);
  if (k0 < sk) load_tile(k0, 0);
  cp_async_commit();
  cp_async_wait<1>();  // Q is in
  __syncthreads();

  std::uint32_t qf[MT][D / 16][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      load_a_rows(qf[mt][kk], qs, stride, warp_row0 + mt * 16, kk * 16, lane);

  float o[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;
  const float scale_log2 = scale * kLog2e;

  for (int buf = 0; k0 < sk; buf ^= 1) {
    const int k1 = hull.next_tile(k0 + kBlockKeys, kBlockKeys, sk);
    if (k1 < sk) load_tile(k1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile k0 is in
    __syncthreads();
    const bf16* kt = ks + buf * tile;
    const bf16* vt = vs + buf * tile;

    float s[MT][kBlockKeys / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kBlockKeys / 8; ++nt)
        s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int nt = 0; nt < kBlockKeys / 8; nt += 2) {
        std::uint32_t kb[4];
        load_b_rows(kb, kt, stride, kk * 16, nt * 8, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][nt], qf[mt][kk], kb[0], kb[1]);
          mma_bf16(s[mt][nt + 1], qf[mt][kk], kb[2], kb[3]);
        }
      }

    bool covered = true;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      covered = covered && covers(keys[mt][0], k0, k0 + kBlockKeys) &&
                covers(keys[mt][1], k0, k0 + kBlockKeys);
    const bool full = __all_sync(0xffffffffu, covered);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float tile_max[2] = {-INFINITY, -INFINITY};
      if (full) {
#pragma unroll
        for (int nt = 0; nt < kBlockKeys / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][nt][e] *= scale_log2;
            tile_max[e / 2] = fmaxf(tile_max[e / 2], s[mt][nt][e]);
          }
      } else {
#pragma unroll
        for (int nt = 0; nt < kBlockKeys / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            const std::int64_t key = k0 + nt * 8 + quad * 2 + (e % 2);
            s[mt][nt][e] = allowed(keys[mt][r], key) ? s[mt][nt][e] * scale_log2 : -INFINITY;
            tile_max[r] = fmaxf(tile_max[r], s[mt][nt][e]);
          }
      }
      float base[2], correction[2], row_sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        const float new_m = fmaxf(m[mt][r], tile_max[r]);
        // While a row has seen no allowed key, exponentiate against 0: every p is then 0.
        base[r] = new_m == -INFINITY ? 0.0f : new_m;
        correction[r] = exp2f(m[mt][r] - base[r]);
        m[mt][r] = new_m;
      }
#pragma unroll
      for (int nt = 0; nt < kBlockKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][nt][e] = exp2f(s[mt][nt][e] - base[e / 2]);
          row_sum[e / 2] += s[mt][nt][e];
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) l[mt][r] = l[mt][r] * correction[r] + row_sum[r];
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[mt][dt][0] *= correction[0];
        o[mt][dt][1] *= correction[0];
        o[mt][dt][2] *= correction[1];
        o[mt][dt][3] *= correction[1];
      }
    }

    // O += P V: the S accumulators of key columns [16j, 16j + 16) are the A fragment of step j.
#pragma unroll
    for (int j = 0; j < kBlockKeys / 16; ++j) {
      std::uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack(s[mt][2 * j][0], s[mt][2 * j][1]);
        a[mt][1] = pack(s[mt][2 * j][2], s[mt][2 * j][3]);
        a[mt][2] = pack(s[mt][2 * j + 1][0], s[mt][2 * j + 1][1]);
        a[mt][3] = pack(s[mt][2 * j + 1][2], s[mt][2 * j + 1][3]);
      }
#pragma unroll
      for (int dt = 0; dt < D / 8; dt += 2) {
        std::uint32_t vb[4];
        load_b_cols(vb, vt, stride, j * 16, dt * 8, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(o[mt][dt], a[mt], vb[0], vb[1]);
          mma_bf16(o[mt][dt + 1], a[mt], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // buffer `buf` is free for the tile after next
    k0 = k1;
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 1);
      l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const std::int64_t row = q0 + warp_row0 + mt * 16 + group + 8 * r;
      if (row >= g.sq) continue;
      const float inv = l[mt][r] > 0.0f ? 1.0f / l[mt][r] : 0.0f;
      bf16* orow = out + ((b * g.sq + row) * g.heads + h) * D + quad * 2;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<__nv_bfloat162*>(orow + dt * 8) =
            __floats2bfloat162_rn(o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
      if (quad == 0)
        lse[(b * g.heads + h) * g.sq + row] =
            l[mt][r] > 0.0f ? (m[mt][r] + log2f(l[mt][r])) * kLn2 : -INFINITY;
    }
  }
}

}  // namespace

bool attention_forward_tensor_cores(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionMask& mask, float scale, const Geometry& g,
                                    Tensor& out, Tensor& lse) {
  if (q.dtype() != DType::bf16 || (g.dim != 64 && g.dim != 128)) return false;
  if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out)) return false;
  if (!offsets_fit_int32(g)) return false;
  auto launch = [&](auto kernel, auto dim) {
    constexpr int d = decltype(dim)::value, rows = block_rows<d>();
    const dim3 grid(static_cast<unsigned>((g.sq + rows - 1) / rows),
                    static_cast<unsigned>(g.batch * g.heads));
    const std::size_t shared = (rows + 4 * kBlockKeys) * (d + 8) * sizeof(bf16);
    if (shared > 48 * 1024)
      MM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(shared)));
    kernel<<<grid, kWarps * 32, shared>>>(cptr<bf16>(q), cptr<bf16>(k), cptr<bf16>(v), mask, scale,
                                          g, mptr<bf16>(out), mptr<float>(lse));
  };
  if (g.dim == 64)
    launch(attention_forward_mma_kernel<64>, std::integral_constant<int, 64>{});
  else
    launch(attention_forward_mma_kernel<128>, std::integral_constant<int, 128>{});
  MM_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace metamorph::cuda

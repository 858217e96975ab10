// Attention backward on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate), the
// flash-attention-2 scheme with two kernels so that no gradient needs atomics:
// - dq: a block of 4 warps owns 64 query rows (Q and dO fragments in registers) and streams
//   32-key tiles: S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - delta), dQ += dS K.
// - dk/dv: a block owns 64 keys and streams 32-query tiles of every query head of its GQA group,
//   in order: S^T = K Q^T, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q.
// P and dS are rounded to bf16 before their products, as flash attention does. delta = rowsum(dO
// * O) comes from attention_delta_kernel (cuda_attention.cu).
// The streamed tiles are double-buffered with cp.async (the next touched tile loads while this one
// is computed), and a warp whose part of a tile is wholly allowed skips the per-element mask test
// (wholly masked: skips the tile's math).
#include <climits>
#include <cmath>
#include <cstdint>

#include "runtime/backends/cuda/cuda_attention_common.cuh"
#include "runtime/backends/cuda/cuda_mma.cuh"

namespace metamorph::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kBlockRows = 16 * kWarps;  // query rows (dq) or keys (dk/dv) per block
constexpr int kTile = 32;                // keys (dq) or queries (dk/dv) per streamed tile

// C = A B^T over the head dimension, for a 16-row A (fragments from `a_tile`) and kTile rows of
// B (shared, row-major [row][dim]): c[nt] covers B rows [8 nt, 8 nt + 8).
template <int D>
__device__ __forceinline__ void rows_times_rows(float (&c)[kTile / 8][4], const bf16* a_tile,
                                                int a_row0, const bf16* b_tile, int lane) {
  constexpr int stride = D + 8;
#pragma unroll
  for (int nt = 0; nt < kTile / 8; ++nt) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    std::uint32_t a[4];
    load_a_rows(a, a_tile, stride, a_row0, kk * 16, lane);
#pragma unroll
    for (int nt = 0; nt < kTile / 8; nt += 2) {
      std::uint32_t b[4];
      load_b_rows(b, b_tile, stride, kk * 16, nt * 8, lane);
      mma_bf16(c[nt], a, b[0], b[1]);
      mma_bf16(c[nt + 1], a, b[2], b[3]);
    }
  }
}

// acc[dt] += X B where X (16 x kTile) is held as accumulators x[nt] and B is the shared tile
// [kTile][D]: the accumulators of columns [16j, 16j + 16) are the A fragment of step j.
template <int D>
__device__ __forceinline__ void accumulate_times_tile(float (&acc)[D / 8][4],
                                                      const float (&x)[kTile / 8][4],
                                                      const bf16* b_tile, int lane) {
  constexpr int stride = D + 8;
#pragma unroll
  for (int j = 0; j < kTile / 16; ++j) {
    const std::uint32_t a[4] = {pack(x[2 * j][0], x[2 * j][1]), pack(x[2 * j][2], x[2 * j][3]),
                                pack(x[2 * j + 1][0], x[2 * j + 1][1]),
                                pack(x[2 * j + 1][2], x[2 * j + 1][3])};
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      std::uint32_t b[4];
      load_b_cols(b, b_tile, stride, j * 16, dt * 8, lane);
      mma_bf16(acc[dt], a, b[0], b[1]);
      mma_bf16(acc[dt + 1], a, b[2], b[3]);
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    attention_dq_mma_kernel(const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                            const float* lse, const float* delta, AttentionMask mask, float scale,
                            Geometry g, bf16* dq) {
  constexpr int stride = D + 8;
  constexpr int tile = kTile * stride;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  bf16* qs = reinterpret_cast<bf16*>(smem_bytes);
  bf16* dos = qs + kBlockRows * stride;
  bf16* ks = dos + kBlockRows * stride;  // two buffers
  bf16* vs = ks + 2 * tile;              // two buffers
  __shared__ Hull hull;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  const std::int64_t bh = blockIdx.y, b = bh / g.heads, h = bh % g.heads, kvh = h / g.group;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kBlockRows;
  const std::int64_t row[2] = {q0 + warp * 16 + group, q0 + warp * 16 + group + 8};

  AllowedKeys keys[2] = {};
  float lse2[2] = {-INFINITY, -INFINITY}, row_delta[2] = {0.0f, 0.0f};
  for (int r = 0; r < 2; ++r)
    if (row[r] < g.sq) {
      keys[r] = allowed_keys(mask, g.q_offset + row[r], g.sk);
      lse2[r] = lse[(b * g.heads + h) * g.sq + row[r]] * kLog2e;
      row_delta[r] = delta[(b * g.heads + h) * g.sq + row[r]];
    }
  if (threadIdx.x == 0) hull.reset();
  __syncthreads();
  if (quad == 0)
    for (int r = 0; r < 2; ++r) hull.extend(keys[r]);
  __syncthreads();

  const int sq = static_cast<int>(g.sq), sk = static_cast<int>(g.sk);
  const int q_stride = static_cast<int>(g.heads * D), kv_stride = static_cast<int>(g.kv_heads * D);
  const std::int64_t q_head = (b * g.sq * g.heads + h) * D;
  const bf16* kbase = k + (b * g.sk * g.kv_heads + kvh) * D;
  const bf16* vbase = v + (b * g.sk * g.kv_heads + kvh) * D;
  auto load_tile = [&](int k0, int buf) {
    load_rows_async<D>(ks + buf * tile, kTile, stride, kbase, k0, sk, kv_stride);
    load_rows_async<D>(vs + buf * tile, kTile, stride, vbase, k0, sk, kv_stride);
  };
  load_rows_async<D>(qs, kBlockRows, stride, q + q_head, q0, sq, q_stride);
  load_rows_async<D>(dos, kBlockRows, stride, dout + q_head, q0, sq, q_stride);
  int k0 = hull.next_tile(0, kTile, sk);
  if (k0 < sk) load_tile(k0, 0);
  cp_async_commit();

  float acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;
  const float scale_log2 = scale * kLog2e;

  for (int buf = 0; k0 < sk; buf ^= 1) {
    const int k1 = hull.next_tile(k0 + kTile, kTile, sk);
    if (k1 < sk) load_tile(k1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile k0 (and Q, dO) are in
    __syncthreads();
    const bf16* kt = ks + buf * tile;
    const bf16* vt = vs + buf * tile;
    const bool any =
        __any_sync(0xffffffffu, (lse2[0] != -INFINITY && intersects(keys[0], k0, k0 + kTile)) ||
                                    (lse2[1] != -INFINITY && intersects(keys[1], k0, k0 + kTile)));
    if (any) {
      const bool full = __all_sync(0xffffffffu, lse2[0] != -INFINITY && lse2[1] != -INFINITY &&
                                                    covers(keys[0], k0, k0 + kTile) &&
                                                    covers(keys[1], k0, k0 + kTile));
      float s[kTile / 8][4], dp[kTile / 8][4];
      rows_times_rows<D>(s, qs, warp * 16, kt, lane);
      rows_times_rows<D>(dp, dos, warp * 16, vt, lane);
      // Two loops rather than one with `full ||`: the compiler would evaluate the mask anyway.
      if (full) {
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            const float p = exp2f(s[nt][e] * scale_log2 - lse2[r]);
            s[nt][e] = p * (dp[nt][e] - row_delta[r]);  // dS
          }
      } else {
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            const std::int64_t key = k0 + nt * 8 + quad * 2 + (e % 2);
            const bool on = lse2[r] != -INFINITY && allowed(keys[r], key);
            const float p = on ? exp2f(s[nt][e] * scale_log2 - lse2[r]) : 0.0f;
            s[nt][e] = p * (dp[nt][e] - row_delta[r]);  // dS
          }
      }
      accumulate_times_tile<D>(acc, s, kt, lane);
    }
    __syncthreads();  // buffer `buf` is free for the tile after next
    k0 = k1;
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= g.sq) continue;
    bf16* out_row = dq + ((b * g.sq + row[r]) * g.heads + h) * D + quad * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<__nv_bfloat162*>(out_row + dt * 8) =
          __floats2bfloat162_rn(acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale);
  }
}

// dQ of one streamed query tile from the dk/dv kernel (the non-deterministic path): dS of the
// block's 64 keys, staged in shared memory as [key][query], times K, added to the f32 `dq_accum`
// with vector atomics. Warp w takes queries 16 (w % 2) .. +16 and head-dim half w / 2, so the 4
// warps cover the 32 x D tile; ldmatrix.trans turns the [key][query] staging into A fragments.
template <int D>
__device__ __forceinline__ void accumulate_dq_tile(const bf16* ds, int ds_stride, const bf16* ks,
                                                   float* dq_rows, int queries_left, int row_stride,
                                                   int warp, int lane) {
  constexpr int stride = D + 8;
  const int m0 = (warp % 2) * 16, n_begin = (warp / 2) * (D / 2);
  const int group = lane / 4, quad = lane % 4;
#pragma unroll
  for (int n0 = n_begin; n0 < n_begin + D / 2; n0 += 16) {
    float c[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < kBlockRows / 16; ++kk) {
      std::uint32_t a[4];
      {
        const int mat = lane / 8;
        const bf16* p = ds + (kk * 16 + (mat / 2) * 8 + lane % 8) * ds_stride + m0 + (mat % 2) * 8;
        const auto addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                     : "r"(addr));
      }
      std::uint32_t b[4];
      load_b_cols(b, ks, stride, kk * 16, n0, lane);
      mma_bf16(c[0], a, b[0], b[1]);
      mma_bf16(c[1], a, b[2], b[3]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = m0 + group + 8 * r;
      if (row >= queries_left) continue;
#pragma unroll
      for (int j = 0; j < 2; ++j)
        atomicAdd(reinterpret_cast<float2*>(dq_rows + row * row_stride + n0 + j * 8 + quad * 2),
                  make_float2(c[j][2 * r], c[j][2 * r + 1]));
    }
  }
}

// The query tiles of a dk/dv block run over the heads of its GQA group: tile t is head
// kvh * group + t / tiles_per_head, queries [32 (t % tiles_per_head), +32). With `splits` > 1 the
// group's heads are divided among that many blocks (blockIdx.y = (b * kv_heads + kvh) * splits +
// split), each writing its f32 partial dK and dV to partial[split] ([splits][2][b, sk, kvh, D]:
// dK then dV) for sum_head_splits_kernel to add in split order; with one split the block writes
// dK and dV itself. With AccumulateDq the kernel also adds each tile's dQ into dq_accum (f32,
// [b, sq, h, D], unscaled).
template <int D, bool AccumulateDq>
__global__ void __launch_bounds__(kWarps * 32)
    attention_dkdv_mma_kernel(const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                              const float* lse, const float* delta, AttentionMask mask, float scale,
                              Geometry g, int splits, bf16* dk, bf16* dv, float* partial,
                              float* dq_accum) {
  static_assert(kTile == 32, "one lane per query of a streamed tile");
  constexpr int stride = D + 8;
  constexpr int tile = kTile * stride;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  bf16* ks = reinterpret_cast<bf16*>(smem_bytes);
  bf16* vs = ks + kBlockRows * stride;
  bf16* qs = vs + kBlockRows * stride;  // two buffers
  bf16* dos = qs + 2 * tile;            // two buffers
  __shared__ float lse_s[2][kTile], delta_s[2][kTile];
  // The streamed tile's rows' allowed keys, for the per-element test of partial tiles.
  __shared__ AllowedKeys keys_s[2][kTile];
  constexpr int ds_stride = kTile + 8;
  __shared__ __align__(16) bf16 ds_s[AccumulateDq ? kBlockRows * ds_stride : 1];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  const int split = static_cast<int>(blockIdx.y) % splits;
  const std::int64_t bkv = blockIdx.y / splits, b = bkv / g.kv_heads, kvh = bkv % g.kv_heads;
  const int k0 = static_cast<int>(blockIdx.x) * kBlockRows;
  const int warp_k0 = k0 + warp * 16;
  const std::int64_t key[2] = {warp_k0 + group, warp_k0 + group + 8};
  const int sq = static_cast<int>(g.sq), sk = static_cast<int>(g.sk);
  const int q_stride = static_cast<int>(g.heads * D), kv_stride = static_cast<int>(g.kv_heads * D);
  const std::int64_t kv_head = (b * g.sk * g.kv_heads + kvh) * D;
  const int tiles_per_head = (sq + kTile - 1) / kTile;
  const int heads_per_split = static_cast<int>(g.group) / splits;
  const int first_tile = split * heads_per_split * tiles_per_head;
  const int tiles = first_tile + heads_per_split * tiles_per_head;

  // Lane i's query of tile t, and the keys it may attend to (none past the sequence).
  auto lane_keys = [&](int t) {
    const int query = (t % tiles_per_head) * kTile + lane;
    return query < sq ? allowed_keys(mask, g.q_offset + query, g.sk) : AllowedKeys{};
  };
  // Query tiles outside the queries that can see this key tile are skipped on two integer tests;
  // the rest on their rows' keys. Every warp evaluates the same lanes: uniform over the block.
  const AllowedKeys seeing =
      queries_seeing(mask, k0, std::min(k0 + kBlockRows, sk), g.sq, g.q_offset);
  auto next_tile = [&](int from) {
    while (from < tiles) {
      const int head_first = from / tiles_per_head * tiles_per_head;
      const int q0 = (from - head_first) * kTile;
      if (intersects(seeing, q0, q0 + kTile)) {
        if (__any_sync(0xffffffffu, intersects(lane_keys(from), k0, k0 + kBlockRows))) break;
        ++from;
        continue;
      }
      // On to the tile holding the next range's first query, or to the next head.
      long long next_query = LLONG_MAX;
      const KeyRange ranges[2] = {seeing.first, seeing.second};
      for (const KeyRange& r : ranges)
        if (!r.empty() && r.begin >= q0 + kTile && r.begin < next_query) next_query = r.begin;
      from = next_query == LLONG_MAX ? head_first + tiles_per_head
                                     : head_first + static_cast<int>(next_query / kTile);
    }
    return from;
  };
  auto load_tile = [&](int t, int buf) {
    const std::int64_t h = kvh * g.group + t / tiles_per_head;
    const int q0 = (t % tiles_per_head) * kTile;
    const std::int64_t q_head = (b * g.sq * g.heads + h) * D;
    load_rows_async<D>(qs + buf * tile, kTile, stride, q + q_head, q0, sq, q_stride);
    load_rows_async<D>(dos + buf * tile, kTile, stride, dout + q_head, q0, sq, q_stride);
    if (threadIdx.x < kTile) {
      const int query = q0 + static_cast<int>(threadIdx.x);
      const bool valid = query < sq;
      const std::int64_t at = (b * g.heads + h) * g.sq + (valid ? query : 0);
      cp_async4(&lse_s[buf][threadIdx.x], lse + at, valid);
      cp_async4(&delta_s[buf][threadIdx.x], delta + at, valid);
    }
  };

  load_rows_async<D>(ks, kBlockRows, stride, k + kv_head, k0, sk, kv_stride);
  load_rows_async<D>(vs, kBlockRows, stride, v + kv_head, k0, sk, kv_stride);
  int t = next_tile(first_tile);
  if (t < tiles) load_tile(t, 0);
  cp_async_commit();

  float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[dt][e] = dv_acc[dt][e] = 0.0f;
  const float scale_log2 = scale * kLog2e;

  for (int buf = 0; t < tiles; buf ^= 1) {
    const AllowedKeys mine = lane_keys(t);  // lane i: query i of this tile
    if (warp == 0) keys_s[buf][lane] = mine;
    const int t1 = next_tile(t + 1);
    if (t1 < tiles) load_tile(t1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile t (and K, V) are in
    __syncthreads();
    if (__any_sync(0xffffffffu, intersects(mine, warp_k0, warp_k0 + 16))) {
      const bool full = __all_sync(0xffffffffu, covers(mine, warp_k0, warp_k0 + 16));
      const int q0 = (t % tiles_per_head) * kTile;
      const bf16* qt = qs + buf * tile;
      const bf16* dot = dos + buf * tile;
      float p[kTile / 8][4], dp[kTile / 8][4];
      rows_times_rows<D>(p, ks, warp * 16, qt, lane);    // S^T
      rows_times_rows<D>(dp, vs, warp * 16, dot, lane);  // dP^T
      if (full) {
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = nt * 8 + quad * 2 + (e % 2);
            p[nt][e] = exp2f(p[nt][e] * scale_log2 - lse_s[buf][col] * kLog2e);
            dp[nt][e] = p[nt][e] * (dp[nt][e] - delta_s[buf][col]);  // dS^T
          }
      } else {
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = nt * 8 + quad * 2 + (e % 2), query = q0 + col;
            const float row_lse2 = lse_s[buf][col] * kLog2e;
            const bool on =
                query < sq && row_lse2 != -INFINITY && allowed(keys_s[buf][col], key[e / 2]);
            p[nt][e] = on ? exp2f(p[nt][e] * scale_log2 - row_lse2) : 0.0f;
            dp[nt][e] = p[nt][e] * (dp[nt][e] - delta_s[buf][col]);  // dS^T
          }
      }
      accumulate_times_tile<D>(dv_acc, p, dot, lane);
      accumulate_times_tile<D>(dk_acc, dp, qt, lane);
      if constexpr (AccumulateDq)
#pragma unroll
        for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            *reinterpret_cast<__nv_bfloat162*>(
                &ds_s[(warp * 16 + group + 8 * r) * ds_stride + nt * 8 + quad * 2]) =
                __floats2bfloat162_rn(dp[nt][2 * r], dp[nt][2 * r + 1]);
    } else if constexpr (AccumulateDq) {
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          *reinterpret_cast<__nv_bfloat162*>(
              &ds_s[(warp * 16 + group + 8 * r) * ds_stride + nt * 8 + quad * 2]) =
              __floats2bfloat162_rn(0.0f, 0.0f);
    }
    if constexpr (AccumulateDq) {
      __syncthreads();  // every warp's dS rows are staged
      const std::int64_t h = kvh * g.group + t / tiles_per_head;
      const int q0 = (t % tiles_per_head) * kTile;
      float* dq_rows = dq_accum + ((b * g.sq + q0) * g.heads + h) * D;
      accumulate_dq_tile<D>(ds_s, ds_stride, ks, dq_rows, sq - q0, q_stride, warp, lane);
    }
    __syncthreads();  // buffer `buf` (and the dS staging) is free for the tile after next
    t = t1;
  }
  cp_async_wait<0>();

  const std::int64_t n = g.batch * g.sk * g.kv_heads * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= g.sk) continue;
    const std::int64_t offset = ((b * g.sk + key[r]) * g.kv_heads + kvh) * D + quad * 2;
    if (splits > 1) {
      float* pk = partial + 2 * split * n + offset;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        *reinterpret_cast<float2*>(pk + dt * 8) =
            make_float2(dk_acc[dt][2 * r] * scale, dk_acc[dt][2 * r + 1] * scale);
        *reinterpret_cast<float2*>(pk + n + dt * 8) =
            make_float2(dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1]);
      }
      continue;
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(dk + offset + dt * 8) =
          __floats2bfloat162_rn(dk_acc[dt][2 * r] * scale, dk_acc[dt][2 * r + 1] * scale);
      *reinterpret_cast<__nv_bfloat162*>(dv + offset + dt * 8) =
          __floats2bfloat162_rn(dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1]);
    }
  }
}

template <class Kernel>
void raise_shared_limit(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    MM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
}

// dK and dV from the head splits' partials, added in split order (a fixed order: the same bits
// every run). partial: [splits][2][n], dK's n then dV's.
__global__ void sum_head_splits_kernel(const float* partial, int splits, std::int64_t n, bf16* dk,
                                       bf16* dv) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < 2 * n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    float sum = partial[i];
    for (int s = 1; s < splits; ++s) sum += partial[2 * s * n + i];
    (i < n ? dk[i] : dv[i - n]) = __float2bfloat16_rn(sum);
  }
}

// How many blocks share a GQA group's query heads in the dk/dv kernel. One block per (key tile,
// KV head) leaves too few blocks when there are few KV heads (tensor parallelism divides them):
// below about six blocks per SM the last wave runs half empty. Splitting costs an f32 write and
// read of dK and dV per split, small next to the kernel, and changes their rounding, so it is
// used only where the grid is short.
int dkdv_head_splits(const Geometry& g, std::int64_t key_tiles) {
  static_assert(kWarps == 4, "the six blocks per SM assume 4-warp blocks");
  int device = 0, sms = 0;
  MM_CUDA_CHECK(cudaGetDevice(&device));
  MM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const std::int64_t blocks = key_tiles * g.batch * g.kv_heads, wanted = 6 * std::int64_t{sms};
  int splits = 1;
  while (blocks * splits < wanted && g.group % (2 * splits) == 0) splits *= 2;
  return splits;
}

__global__ void scale_to_bf16_kernel(const float* x, float scale, std::int64_t n, bf16* y) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i] * scale);
}

template <int D>
void launch_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& lse, const Tensor& delta, const AttentionMask& mask, float scale,
                     const Geometry& g, Tensor& dq, Tensor& dk, Tensor& dv, Arena& arena,
                     bool atomic_dq) {
  const std::size_t shared = (2 * kBlockRows + 4 * kTile) * (D + 8) * sizeof(bf16);
  const std::int64_t key_tiles = (g.sk + kBlockRows - 1) / kBlockRows;
  const int splits = g.sk > 0 ? dkdv_head_splits(g, key_tiles) : 1;
  const dim3 dkdv_grid(static_cast<unsigned>(key_tiles),
                       static_cast<unsigned>(g.batch * g.kv_heads * splits));
  const std::int64_t n = g.batch * g.sk * g.kv_heads * D;
  Tensor partial;
  if (splits > 1) partial = Tensor::empty({2 * splits, n}, DType::f32, arena);
  float* partial_ptr = splits > 1 ? mptr<float>(partial) : nullptr;
  auto sum_splits = [&] {
    if (splits == 1) return;
    sum_head_splits_kernel<<<grid_for(2 * n), kThreads>>>(partial_ptr, splits, n, mptr<bf16>(dk),
                                                          mptr<bf16>(dv));
    MM_CUDA_CHECK_LAUNCH();
  };
  if (atomic_dq) {
    Tensor dq_accum = Tensor::empty(q.shape(), DType::f32, arena);
    MM_CUDA_CHECK(cudaMemsetAsync(dq_accum.raw(), 0, dq_accum.bytes(), 0));
    if (g.sk > 0) {
      raise_shared_limit(attention_dkdv_mma_kernel<D, true>, shared);
      attention_dkdv_mma_kernel<D, true><<<dkdv_grid, kWarps * 32, shared>>>(
          cptr<bf16>(dout), cptr<bf16>(q), cptr<bf16>(k), cptr<bf16>(v), cptr<float>(lse),
          cptr<float>(delta), mask, scale, g, splits, mptr<bf16>(dk), mptr<bf16>(dv), partial_ptr,
          mptr<float>(dq_accum));
      MM_CUDA_CHECK_LAUNCH();
      sum_splits();
    }
    scale_to_bf16_kernel<<<grid_for(dq.numel()), kThreads>>>(cptr<float>(dq_accum), scale,
                                                             dq.numel(), mptr<bf16>(dq));
    MM_CUDA_CHECK_LAUNCH();
    return;
  }
  raise_shared_limit(attention_dq_mma_kernel<D>, shared);
  raise_shared_limit(attention_dkdv_mma_kernel<D, false>, shared);
  const dim3 dq_grid(static_cast<unsigned>((g.sq + kBlockRows - 1) / kBlockRows),
                     static_cast<unsigned>(g.batch * g.heads));
  attention_dq_mma_kernel<D><<<dq_grid, kWarps * 32, shared>>>(
      cptr<bf16>(dout), cptr<bf16>(q), cptr<bf16>(k), cptr<bf16>(v), cptr<float>(lse),
      cptr<float>(delta), mask, scale, g, mptr<bf16>(dq));
  MM_CUDA_CHECK_LAUNCH();
  if (g.sk == 0) return;
  attention_dkdv_mma_kernel<D, false><<<dkdv_grid, kWarps * 32, shared>>>(
      cptr<bf16>(dout), cptr<bf16>(q), cptr<bf16>(k), cptr<bf16>(v), cptr<float>(lse),
      cptr<float>(delta), mask, scale, g, splits, mptr<bf16>(dk), mptr<bf16>(dv), partial_ptr,
      nullptr);
  MM_CUDA_CHECK_LAUNCH();
  sum_splits();
}

}  // namespace

bool attention_backward_tensor_cores(const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& lse, const Tensor& delta,
                                     const AttentionMask& mask, float scale, const Geometry& g,
                                     Tensor& dq, Tensor& dk, Tensor& dv, Arena& arena,
                                     bool atomic_dq) {
  if (q.dtype() != DType::bf16 || (g.dim != 64 && g.dim != 128)) return false;
  for (const Tensor* t : {&dout, &q, &k, &v, static_cast<const Tensor*>(&dq),
                          static_cast<const Tensor*>(&dk), static_cast<const Tensor*>(&dv)})
    if (!aligned16(*t)) return false;
  if (!offsets_fit_int32(g)) return false;
  if (g.dim == 64)
    launch_backward<64>(dout, q, k, v, lse, delta, mask, scale, g, dq, dk, dv, arena, atomic_dq);
  else
    launch_backward<128>(dout, q, k, v, lse, delta, mask, scale, g, dq, dk, dv, arena, atomic_dq);
  return true;
}

}  // namespace metamorph::cuda

// RoPE of the CUDA backend: the `table`, `fused` and `fused_deep` kernels of
// cuda_kernel_variants.hpp.
//
// All take the angle positions[s] * theta^(-2i / dim) in double, like the CPU reference (an f32
// angle loses ~1e-4 rad at positions in the thousands), and round its cos and sin to f32 once:
// they rotate by the same f32 values. `table` builds a [2, seq, dim / 2] table in a first kernel
// and the rotation reads two table values per pair; `fused` has each warp compute the cos and sin
// of one position into shared memory and rotate the rows of that position for every head (and
// every batch row of its group), so the table costs no launch and no global traffic, and each
// position's double sincos is done once per group of batch rows rather than once per head.
// `fused_deep` keeps eight run pairs in flight per lane instead of four.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernel_variants.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

// cos and sin of every (position, frequency) pair: table[s, i] for the angle
// positions[s] * theta^(-2i / dim), in double like the CPU reference (an f32 angle loses ~1e-4 rad
// at positions in the thousands) and rounded to f32 once. The rotation kernel then reads two table
// values per pair instead of computing a double sincos for every head and batch row. A thread
// takes one frequency (one double pow) for kRopeTablePositions positions.
constexpr std::int64_t kRopeTablePositions = 16;

__global__ void rope_table_kernel(const std::int32_t* positions, std::int64_t seq, std::int64_t dim,
                                  double theta, float* cos_table, float* sin_table) {
  const std::int64_t half = dim / 2;
  const std::int64_t position_groups = (seq + kRopeTablePositions - 1) / kRopeTablePositions;
  for (std::int64_t p = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
       p < position_groups * half; p += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t i = p % half, s0 = (p / half) * kRopeTablePositions;
    const double inv_freq = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    for (std::int64_t s = s0; s < min(seq, s0 + kRopeTablePositions); ++s) {
      double sn, cs;
      sincos(static_cast<double>(positions[s]) * inv_freq, &sn, &cs);
      cos_table[s * half + i] = static_cast<float>(cs);
      sin_table[s * half + i] = static_cast<float>(sn);
    }
  }
}

// One tensor of a table rotation: x [batch, seq, heads, 2 * half], `runs` = batch * seq * heads *
// half / V.
template <class T>
struct RopeSegment {
  T* x;
  std::int64_t heads, runs;
};

// Rotates the pairs (i, i + half) of each head vector, V consecutive i per thread (16-byte runs of
// both halves when the sizes and pointers allow, V = 1 otherwise), over the runs of `first` and
// then those of `second` (an attention layer's q and k in one launch; second.runs = 0 for one).
template <class T, int V>
__global__ void rope_kernel(RopeSegment<T> first, RopeSegment<T> second, const float* cos_table,
                            const float* sin_table, std::int64_t seq, std::int64_t half,
                            float sign) {
  const std::int64_t runs_per_half = half / V, total_runs = first.runs + second.runs;
  for (std::int64_t p = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; p < total_runs;
       p += std::int64_t{gridDim.x} * blockDim.x) {
    const bool in_first = p < first.runs;
    const RopeSegment<T>& segment = in_first ? first : second;
    const std::int64_t run = in_first ? p : p - first.runs;
    const std::int64_t i = (run % runs_per_half) * V;
    const std::int64_t vec = run / runs_per_half;  // (batch row, head)
    const std::int64_t s = (vec / segment.heads) % seq;
    T* v = segment.x + vec * 2 * half;
    float a[V], b[V], c[V], sn[V];
    load_run<V>(v + i, a);
    load_run<V>(v + half + i, b);
    load_run<V>(cos_table + s * half + i, c);
    load_run<V>(sin_table + s * half + i, sn);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      // The inverse (= transpose) rotation is the same rotation by -angle. Rounding spelled out
      // (product, then fused multiply-add): the compiler would contract the one-pair and the
      // 16-byte instantiations differently, and f32 results would depend on alignment.
      const float sin_j = sign * sn[j], a_j = a[j];
      a[j] = __fmaf_rn(a_j, c[j], -__fmul_rn(b[j], sin_j));
      b[j] = __fmaf_rn(b[j], c[j], __fmul_rn(a_j, sin_j));
    }
    store_run<V>(v + i, a);
    store_run<V>(v + half + i, b);
  }
}

constexpr int kRopeWarps = 8;  // warps per block of the fused kernel
// Work items (a position and a share of the batch rows) the fused kernel aims for: a short
// sequence splits the batch so that the device still gets thousands of warps.
constexpr std::int64_t kRopeTargetItems = 8192;
constexpr int kRopeMaxHalf = 512;  // shared memory: half * (8 + 8 * kRopeWarps) bytes

// The loads of one round: InFlight run pairs (i, i + half) of a lane, 16 bytes each, kept packed
// until rotated (half the registers of f32 for bf16).
template <int InFlight>
struct RopeRound {
  uint4 a[InFlight], b[InFlight];
  std::int64_t at[InFlight];  // element offset of the head vector in x
  int col[InFlight];          // i of the first pair of the run
  bool valid[InFlight];
};

// The V = 16 / sizeof(T) values of one 16-byte word.
template <class T, int V>
__device__ __forceinline__ void unpack16(const uint4& word, float (&v)[V]) {
  static_assert(V * sizeof(T) == 16, "one 16-byte word");
  constexpr int per_word = 4 / static_cast<int>(sizeof(T));
  vector_detail::unpack_word<T>(word.x, v);
  vector_detail::unpack_word<T>(word.y, v + per_word);
  vector_detail::unpack_word<T>(word.z, v + 2 * per_word);
  vector_detail::unpack_word<T>(word.w, v + 3 * per_word);
}

// x [batch, seq, heads, 2 * half]; an item is (position s, batch rows [g * per_group, ...)) for
// item = s * groups + g. Dynamic shared memory: half doubles (the inverse frequencies), then per
// warp half cos and half sin floats.
// InFlight: run pairs a lane loads before it rotates and stores them (a round).
template <class T, int V, int InFlight>
__global__ void __launch_bounds__(kRopeWarps * 32, InFlight <= 4 ? 3 : 2)
    rope_fused_kernel(T* x, const std::int32_t* positions, std::int64_t batch, std::int64_t seq,
                      int heads, int half, std::int64_t groups, std::int64_t per_group,
                      double theta, float sign) {
  extern __shared__ double rope_shared[];
  double* inv_freq = rope_shared;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* cos_s = reinterpret_cast<float*>(rope_shared + half) + warp * 2 * half;
  float* sin_s = cos_s + half;
  const int runs_per_half = half / V, pairs_per_row = heads * runs_per_half;
  const std::int64_t row_elems = std::int64_t{heads} * 2 * half;
  const std::int64_t items = seq * groups;
  // The warp's item: position s, batch rows from b0, `work` run pairs.
  std::int64_t item = std::int64_t{blockIdx.x} * kRopeWarps + warp, s = 0, b0 = 0;
  int work = 0;
  auto start_item = [&] {
    s = item / groups;
    b0 = (item % groups) * per_group;
    work = static_cast<int>((min(batch, b0 + per_group) - b0) * pairs_per_row);
  };
  RopeRound<InFlight> round;
  auto load = [&](int first) {
#pragma unroll
    for (int u = 0; u < InFlight; ++u) {
      const int q = first + u * 32;
      round.valid[u] = q < work;
      if (!round.valid[u]) continue;
      const int b = q / pairs_per_row, p = q % pairs_per_row;
      const int head = p / runs_per_half;
      round.col[u] = (p % runs_per_half) * V;
      round.at[u] = ((b0 + b) * seq + s) * row_elems + std::int64_t{head} * 2 * half;
      round.a[u] = *reinterpret_cast<const uint4*>(x + round.at[u] + round.col[u]);
      round.b[u] = *reinterpret_cast<const uint4*>(x + round.at[u] + half + round.col[u]);
    }
  };
  // The first item's first round of loads flies while the block computes the inverse frequencies,
  // and every item's while its warp computes the position's cos and sin.
  bool loaded = item < items;
  if (loaded) {
    start_item();
    load(lane);
  }
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    inv_freq[i] = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(2 * half));
  __syncthreads();
  for (; item < items; item += std::int64_t{gridDim.x} * kRopeWarps) {
    if (!loaded) {
      start_item();
      load(lane);
    }
    loaded = false;
    int first = lane;
    __syncwarp();  // the previous item's cos and sin are no longer read
    const double position = static_cast<double>(positions[s]);
    for (int i = lane; i < half; i += 32) {
      double sn, cs;
      sincos(position * inv_freq[i], &sn, &cs);
      cos_s[i] = static_cast<float>(cs);
      sin_s[i] = static_cast<float>(sn);
    }
    __syncwarp();
    while (true) {
#pragma unroll
      for (int u = 0; u < InFlight; ++u) {
        if (!round.valid[u]) continue;
        float c[V], sn[V];
#pragma unroll
        for (int j = 0; j < V; j += 4) {
          const float4 cv = *reinterpret_cast<const float4*>(cos_s + round.col[u] + j);
          const float4 sv = *reinterpret_cast<const float4*>(sin_s + round.col[u] + j);
          c[j] = cv.x, c[j + 1] = cv.y, c[j + 2] = cv.z, c[j + 3] = cv.w;
          sn[j] = sv.x, sn[j + 1] = sv.y, sn[j + 2] = sv.z, sn[j + 3] = sv.w;
        }
        float a[V], b[V];
        unpack16<T>(round.a[u], a);
        unpack16<T>(round.b[u], b);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          // The inverse (= transpose) rotation is the same rotation by -angle.
          const float sin_j = sign * sn[j], a_j = a[j];
          a[j] = a_j * c[j] - b[j] * sin_j;
          b[j] = b[j] * c[j] + a_j * sin_j;
        }
        store_run<V>(x + round.at[u] + round.col[u], a);
        store_run<V>(x + round.at[u] + half + round.col[u], b);
      }
      first += 32 * InFlight;
      if (first >= work) break;
      load(first);
    }
  }
}

// The checks of one rope operand; returns x's (batch, seq, heads, head_dim).
void check_rope_operand(const Tensor& x, const Tensor& positions, float theta, const char* op) {
  check_on_device(x, op);
  check_on_device(positions, op);
  MM_ASSERT(x.rank() == 4, op, " wants x [batch, seq, heads, head_dim], got ",
            shape_string(x.shape()));
  MM_ASSERT(positions.numel() == x.dim(1) && positions.dtype() == DType::i32, op, " positions ",
            shape_string(positions.shape()), " for seq ", x.dim(1));
  require(x.dim(3) % 2 == 0, "rotary embedding needs an even head_dim, got ", x.dim(3));
  require(std::isfinite(theta) && theta > 0.0f, "rope_theta ", theta, " must be positive");
}

// The table path for x, and for `also` (k beside q, or null) in the same rotation launch: the
// cos/sin table is built once for both.
void rope_by_table(CudaBackend& backend, Tensor& x, Tensor* also, const Tensor& positions,
                   float theta, bool inverse) {
  const std::int64_t seq = x.dim(1), dim = x.dim(3), half = dim / 2;
  const std::int64_t pairs = x.numel() / 2, also_pairs = also != nullptr ? also->numel() / 2 : 0;
  if (pairs + also_pairs == 0) return;
  Tensor table = backend.empty({2, seq, half});  // cos, then sin
  const float* cos_table = cptr<float>(table);
  const float* sin_table = cos_table + seq * half;
  const std::int64_t table_threads = (seq + kRopeTablePositions - 1) / kRopeTablePositions * half;
  rope_table_kernel<<<grid_for(table_threads), kThreads>>>(
      cptr<std::int32_t>(positions), seq, dim, static_cast<double>(theta), mptr<float>(table),
      mptr<float>(table) + seq * half);
  MM_CUDA_CHECK_LAUNCH();
  const float sign = inverse ? -1.0f : 1.0f;
  dispatch_float(x.dtype(), "rope", [&](auto t) {
    using T = decltype(t);
    auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      const RopeSegment<T> first{mptr<T>(x), x.dim(2), pairs / V};
      const RopeSegment<T> second{also != nullptr ? mptr<T>(*also) : nullptr,
                                  also != nullptr ? also->dim(2) : 1, also_pairs / V};
      rope_kernel<T, V><<<grid_for(first.runs + second.runs), kThreads>>>(
          first, second, cos_table, sin_table, seq, half, sign);
    };
    constexpr int V = kPerWord16<T>;
    const bool runs16 = half % V == 0 && aligned16(x.raw(), cos_table, sin_table) &&
                        (also == nullptr || aligned16(also->raw()));
    if (runs16)
      launch(std::integral_constant<int, V>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  MM_CUDA_CHECK_LAUNCH();
}

}  // namespace

const char* kernel_name(RopeKernel kernel) {
  switch (kernel) {
    case RopeKernel::table:
      return "table";
    case RopeKernel::fused:
      return "fused";
    case RopeKernel::fused_deep:
      return "fused_deep";
  }
  return "?";
}

void rope_with(RopeKernel kernel, CudaBackend& backend, Tensor& x, const Tensor& positions,
               float theta, bool inverse) {
  check_rope_operand(x, positions, theta, "rope");
  const std::int64_t batch = x.dim(0), seq = x.dim(1), heads = x.dim(2), dim = x.dim(3);
  const std::int64_t pairs = x.numel() / 2, half = dim / 2;
  if (pairs == 0) return;
  const float sign = inverse ? -1.0f : 1.0f;
  if (kernel != RopeKernel::table) {
    bool launched = false;
    dispatch_float(x.dtype(), "rope", [&](auto t) {
      using T = decltype(t);
      constexpr int V = kPerWord16<T>;
      // Batch rows per item, and items per position (none of them empty).
      const std::int64_t split =
          std::clamp<std::int64_t>((kRopeTargetItems + seq - 1) / seq, 1, batch);
      const std::int64_t per_group = (batch + split - 1) / split;
      const std::int64_t groups = (batch + per_group - 1) / per_group;
      if (half % V != 0 || half > kRopeMaxHalf || !aligned16(x.raw()) ||
          per_group * heads * half >= (std::int64_t{1} << 31))
        return;
      const std::int64_t blocks =
          std::min<std::int64_t>((seq * groups + kRopeWarps - 1) / kRopeWarps, 65535);
      const std::size_t shared = static_cast<std::size_t>(half) * (8 + 8 * kRopeWarps);
      auto launch = [&](auto kernel_function) {
        kernel_function<<<static_cast<unsigned>(blocks), kRopeWarps * 32, shared>>>(
            mptr<T>(x), cptr<std::int32_t>(positions), batch, seq, static_cast<int>(heads),
            static_cast<int>(half), groups, per_group, static_cast<double>(theta), sign);
      };
      if (kernel == RopeKernel::fused_deep)
        launch(rope_fused_kernel<T, V, 8>);
      else
        launch(rope_fused_kernel<T, V, 4>);
      launched = true;
    });
    if (launched) {
      MM_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  rope_by_table(backend, x, nullptr, positions, theta, inverse);
}

void CudaBackend::rope(Tensor& x, const Tensor& positions, float theta, bool inverse) {
  rope_with(kDefaultRope, *this, x, positions, theta, inverse);
}

void CudaBackend::rope_qk(Tensor& q, Tensor& k, const Tensor& positions, float theta,
                          bool inverse) {
  static_assert(kDefaultRope == RopeKernel::table, "rope_qk shares the table kernel's pass");
  check_rope_operand(q, positions, theta, "rope_qk");
  check_rope_operand(k, positions, theta, "rope_qk");
  MM_ASSERT(k.dim(0) == q.dim(0) && k.dim(1) == q.dim(1) && k.dim(3) == q.dim(3) &&
                k.dtype() == q.dtype(),
            "rope_qk wants q and k of one batch, seq, head_dim and dtype, got q ",
            shape_string(q.shape()), " ", dtype_name(q.dtype()), " and k ", shape_string(k.shape()),
            " ", dtype_name(k.dtype()));
  rope_by_table(*this, q, &k, positions, theta, inverse);
}

}  // namespace metamorph::cuda

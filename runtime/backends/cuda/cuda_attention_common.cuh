#pragma once
// What the attention kernels share: the problem geometry, the per-element mask test against a
// row's allowed key ranges, and the block-wide hull of those ranges used to skip key tiles.
#include <climits>
#include <cstdint>

#include "runtime/backends/cpu/attention_key_ranges.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/core/attention_mask.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph::cuda {

struct Geometry {
  std::int64_t batch, sq, sk, heads, kv_heads, dim, group, q_offset;
};

__device__ __forceinline__ bool allowed(const AllowedKeys& keys, std::int64_t key) {
  return keys.first.contains(key) || keys.second.contains(key);
}

// The tensor-core kernels index rows inside one head with 32-bit offsets.
inline bool offsets_fit_int32(const Geometry& g) {
  constexpr std::int64_t limit = std::int64_t{1} << 31;
  return g.sq * g.heads * g.dim < limit && g.sk * g.kv_heads * g.dim < limit;
}

// Whether every key of [begin, end) is allowed (the tile lies inside one range): such tiles skip
// the per-element mask test.
__device__ __forceinline__ bool covers(const AllowedKeys& keys, std::int64_t begin,
                                       std::int64_t end) {
  return (keys.first.begin <= begin && end <= keys.first.end) ||
         (keys.second.begin <= begin && end <= keys.second.end);
}
// Whether any key of [begin, end) is allowed.
__device__ __forceinline__ bool intersects(const AllowedKeys& keys, std::int64_t begin,
                                           std::int64_t end) {
  return (!keys.first.empty() && keys.first.begin < end && begin < keys.first.end) ||
         (!keys.second.empty() && keys.second.begin < end && begin < keys.second.end);
}

// Shared-memory hull of the allowed key ranges of a set of rows; reset by one thread, extended
// with integer atomics (order-free), read after a barrier.
struct Hull {
  long long lo[2], hi[2];
  __device__ void reset() {
    for (int s = 0; s < 2; ++s) {
      lo[s] = LLONG_MAX;
      hi[s] = LLONG_MIN;
    }
  }
  __device__ void extend(const AllowedKeys& keys) {
    const KeyRange r[2] = {keys.first, keys.second};
    for (int s = 0; s < 2; ++s)
      if (!r[s].empty()) {
        atomicMin(&lo[s], static_cast<long long>(r[s].begin));
        atomicMax(&hi[s], static_cast<long long>(r[s].end));
      }
  }
  __device__ bool touches(std::int64_t begin, std::int64_t end) const {
    for (int s = 0; s < 2; ++s)
      if (lo[s] < end && begin < hi[s]) return true;
    return false;
  }
  // The first tile start at or after `from` (a multiple of `tile`) whose keys touch the hull;
  // `end` when none does. Uniform over the block: every thread reads the same hull.
  __device__ int next_tile(int from, int tile, int end) const {
    long long best = end;
    for (int s = 0; s < 2; ++s) {
      if (hi[s] <= from || lo[s] >= hi[s]) continue;  // this range is behind `from`, or empty
      const long long start = lo[s] <= from ? from : lo[s] / tile * tile;
      if (start < best) best = start;
    }
    return static_cast<int>(best);
  }
};

// The tensor-core forward (cuda_attention_mma.cu): bf16, head_dim 64 or 128, 16-byte aligned
// tensors. Returns false, launching nothing, when the problem is outside that.
bool attention_forward_tensor_cores(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionMask& mask, float scale, const Geometry& g,
                                    Tensor& out, Tensor& lse);

// The tensor-core backward (cuda_attention_mma_backward.cu), same conditions; `delta` is
// rowsum(dout * out) [b, h, sq]; scratch (split dK/dV partials, the atomic dQ) comes from `arena`.
// With `atomic_dq` dQ is added up by float atomics inside the dk/dv kernel, into an f32 copy of
// q's shape (no separate dQ kernel recomputing S and dP): faster, but the order of the additions,
// and so dQ's last bits, varies from run to run. Without it every gradient is reduced in a fixed
// order.
bool attention_backward_tensor_cores(const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& lse, const Tensor& delta,
                                     const AttentionMask& mask, float scale, const Geometry& g,
                                     Tensor& dq, Tensor& dk, Tensor& dv, Arena& arena,
                                     bool atomic_dq);

}  // namespace metamorph::cuda

// Embedding lookups (whole and vocabulary-sharded) and RoPE of the CUDA backend.
#include <climits>
#include <cmath>
#include <cstdint>

#include <cub/device/device_radix_sort.cuh>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

// first_bad = the smallest position whose id lies outside [0, vocab) (integer atomics: the
// result does not depend on the order).
__global__ void find_bad_id_kernel(const std::int32_t* ids, std::int64_t tokens, std::int64_t vocab,
                                   long long* first_bad) {
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < tokens;
       t += std::int64_t{gridDim.x} * blockDim.x)
    if (ids[t] < 0 || ids[t] >= vocab) atomicMin(first_bad, static_cast<long long>(t));
}

// Rows outside [offset, offset + rows) of the table give zeros (the sharded lookup).
template <class T, class O>
__global__ void embedding_forward_kernel(const T* table, const std::int32_t* ids,
                                         std::int64_t offset, std::int64_t rows,
                                         std::int64_t tokens, std::int64_t hidden, O* out) {
  const std::int64_t n = tokens * hidden;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t t = i / hidden, c = i % hidden;
    const std::int64_t row = static_cast<std::int64_t>(ids[t]) - offset;
    out[i] = from_float<O>(row >= 0 && row < rows ? to_float(table[row * hidden + c]) : 0.0f);
  }
}

// The embedding gradient without atomics: the tokens sorted by table row with a stable sort, so
// each row's tokens keep their order, then a block per row adds its tokens' gradients in that
// order. The additions and their order are those of a loop over the tokens, so the result is the
// same bits every run. Tokens whose row lies outside this shard carry the key `rows` and sort last.
__global__ void embedding_row_keys_kernel(const std::int32_t* ids, std::int64_t offset,
                                          std::int64_t rows, std::int64_t tokens,
                                          std::uint32_t* keys, std::uint32_t* order) {
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < tokens;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t row = static_cast<std::int64_t>(ids[t]) - offset;
    keys[t] = static_cast<std::uint32_t>(row >= 0 && row < rows ? row : rows);
    order[t] = static_cast<std::uint32_t>(t);
  }
}

// Block (i, j) adds the run of sorted position i, if i starts one (its key differs from i - 1's),
// into columns [kThreads j, kThreads (j + 1)) of its row, a column per thread. A frequent token
// makes a long run: its gradients are loaded kRunBatch at a time, then added in order.
constexpr int kRunBatch = 8;

template <class D, class T>
__global__ void embedding_backward_rows_kernel(const std::uint32_t* keys,
                                               const std::uint32_t* order, std::int64_t tokens,
                                               std::int64_t rows, const D* dout,
                                               std::int64_t hidden, T* dtable) {
  const std::int64_t first = blockIdx.x;
  const std::uint32_t row = keys[first];
  if (row >= rows || (first > 0 && keys[first - 1] == row)) return;
  const std::int64_t c = std::int64_t{blockIdx.y} * blockDim.x + threadIdx.x;
  if (c >= hidden) return;
  // The run's end: the first sorted position past `first` with a larger key.
  std::int64_t lo = first + 1, hi = tokens;
  while (lo < hi) {
    const std::int64_t mid = (lo + hi) / 2;
    if (keys[mid] == row)
      lo = mid + 1;
    else
      hi = mid;
  }
  T* cell = dtable + static_cast<std::int64_t>(row) * hidden + c;
  T sum = *cell;
  for (std::int64_t i = first; i < lo; i += kRunBatch) {
    float g[kRunBatch];
#pragma unroll
    for (int j = 0; j < kRunBatch; ++j)
      g[j] = i + j < lo ? to_float(dout[std::int64_t{order[i + j]} * hidden + c]) : 0.0f;
#pragma unroll
    for (int j = 0; j < kRunBatch; ++j)
      if (i + j < lo) sum = from_float<T>(to_float(sum) + g[j]);
  }
  *cell = sum;
}

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

// Rotates the pairs (i, i + half) of each head vector, V consecutive i per thread (16-byte runs of
// both halves when the sizes and pointers allow, V = 1 otherwise).
template <class T, int V>
__global__ void rope_kernel(T* x, const float* cos_table, const float* sin_table, std::int64_t seq,
                            std::int64_t heads, std::int64_t half, float sign,
                            std::int64_t total_runs) {
  const std::int64_t runs_per_half = half / V;
  for (std::int64_t p = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; p < total_runs;
       p += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t i = (p % runs_per_half) * V;
    const std::int64_t vec = p / runs_per_half;  // (batch row, head)
    const std::int64_t s = (vec / heads) % seq;
    T* v = x + vec * 2 * half;
    float a[V], b[V], c[V], sn[V];
    load_run<V>(v + i, a);
    load_run<V>(v + half + i, b);
    load_run<V>(cos_table + s * half + i, c);
    load_run<V>(sin_table + s * half + i, sn);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      // The inverse (= transpose) rotation is the same rotation by -angle.
      const float sin_j = sign * sn[j], first = a[j];
      a[j] = first * c[j] - b[j] * sin_j;
      b[j] = b[j] * c[j] + first * sin_j;
    }
    store_run<V>(v + i, a);
    store_run<V>(v + half + i, b);
  }
}

void check_ids(CudaBackend& backend, const Tensor& ids, std::int64_t vocab) {
  const std::int64_t tokens = ids.numel();
  if (tokens == 0) return;
  Tensor first_bad = backend.empty({1}, DType::i64);
  const long long none = LLONG_MAX;
  MM_CUDA_CHECK(cudaMemcpy(first_bad.raw(), &none, sizeof none, cudaMemcpyHostToDevice));
  find_bad_id_kernel<<<grid_for(tokens), kThreads>>>(cptr<std::int32_t>(ids), tokens, vocab,
                                                     static_cast<long long*>(first_bad.raw()));
  MM_CUDA_CHECK_LAUNCH();
  long long position = 0;
  MM_CUDA_CHECK(cudaMemcpy(&position, first_bad.raw(), sizeof position, cudaMemcpyDeviceToHost));
  if (position == LLONG_MAX) return;
  std::int32_t id = 0;
  MM_CUDA_CHECK(
      cudaMemcpy(&id, cptr<std::int32_t>(ids) + position, sizeof id, cudaMemcpyDeviceToHost));
  require(false, "token id ", id, " at position ", position, " is outside the vocabulary [0, ",
          vocab, ")");
}

void lookup(const Tensor& table, const Tensor& ids, std::int64_t offset, Tensor& out) {
  const std::int64_t rows = table.dim(0), hidden = table.dim(1), tokens = ids.numel();
  MM_ASSERT(out.numel() == tokens * hidden, "embedding out ", shape_string(out.shape()));
  MM_ASSERT(ids.dtype() == DType::i32, "embedding ids must be i32");
  if (tokens * hidden == 0) return;
  dispatch_float(table.dtype(), "embedding_forward", [&](auto tt) {
    using T = decltype(tt);
    dispatch_float(out.dtype(), "embedding_forward", [&](auto ot) {
      using O = decltype(ot);
      embedding_forward_kernel<<<grid_for(tokens * hidden), kThreads>>>(
          cptr<T>(table), cptr<std::int32_t>(ids), offset, rows, tokens, hidden, mptr<O>(out));
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

void scatter_add(CudaBackend& gpu, const Tensor& ids, const Tensor& dout, std::int64_t offset,
                 Tensor& dtable) {
  const std::int64_t rows = dtable.dim(0), hidden = dtable.dim(1), tokens = ids.numel();
  MM_ASSERT(dout.numel() == tokens * hidden, "embedding_backward dout ", shape_string(dout.shape()),
            " for ", tokens, " ids of width ", hidden);
  MM_ASSERT(tokens < (std::int64_t{1} << 31) && rows < (std::int64_t{1} << 31),
            "embedding_backward: ", tokens, " tokens, ", rows, " rows");
  if (tokens * hidden == 0) return;
  // Keys and token order in, sorted copies out (u32 data in i32 tensors).
  Tensor sort_buffers = gpu.empty({4, tokens}, DType::i32);
  auto* keys_in = static_cast<std::uint32_t*>(sort_buffers.raw());
  auto* order_in = keys_in + tokens;
  auto* keys = order_in + tokens;
  auto* order = keys + tokens;
  embedding_row_keys_kernel<<<grid_for(tokens), kThreads>>>(cptr<std::int32_t>(ids), offset, rows,
                                                            tokens, keys_in, order_in);
  MM_CUDA_CHECK_LAUNCH();
  int key_bits = 1;
  while ((std::int64_t{1} << key_bits) <= rows) ++key_bits;  // the key `rows` included
  std::size_t scratch_bytes = 0;
  MM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, scratch_bytes, keys_in, keys, order_in,
                                                order, static_cast<int>(tokens), 0, key_bits));
  Tensor scratch =
      gpu.empty({static_cast<std::int64_t>(scratch_bytes / sizeof(std::int32_t)) + 1}, DType::i32);
  MM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch.raw(), scratch_bytes, keys_in, keys,
                                                order_in, order, static_cast<int>(tokens), 0,
                                                key_bits));
  dispatch_float(dout.dtype(), "embedding_backward", [&](auto dt) {
    using D = decltype(dt);
    dispatch_float(dtable.dtype(), "embedding_backward", [&](auto tt) {
      using T = decltype(tt);
      const dim3 grid(static_cast<unsigned>(tokens),
                      static_cast<unsigned>((hidden + kThreads - 1) / kThreads));
      embedding_backward_rows_kernel<<<grid, kThreads>>>(keys, order, tokens, rows, cptr<D>(dout),
                                                         hidden, mptr<T>(dtable));
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void CudaBackend::embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) {
  check_all_on_device("embedding_forward", table, ids, out);
  MM_ASSERT(table.rank() == 2, "embedding table ", shape_string(table.shape()));
  check_ids(*this, ids, table.dim(0));
  lookup(table, ids, 0, out);
}

void CudaBackend::embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  check_all_on_device("embedding_backward", ids, dout, dtable);
  MM_ASSERT(dtable.rank() == 2, "embedding dtable ", shape_string(dtable.shape()));
  check_ids(*this, ids, dtable.dim(0));
  scatter_add(*this, ids, dout, 0, dtable);
}

void CudaBackend::embedding_forward_sharded(const Tensor& table, const Tensor& ids,
                                            std::int64_t vocab_offset, Tensor& out) {
  check_all_on_device("embedding_forward_sharded", table, ids, out);
  MM_ASSERT(table.rank() == 2, "embedding table ", shape_string(table.shape()));
  lookup(table, ids, vocab_offset, out);
}

void CudaBackend::embedding_backward_sharded(const Tensor& ids, const Tensor& dout,
                                             std::int64_t vocab_offset, Tensor& dtable) {
  check_all_on_device("embedding_backward_sharded", ids, dout, dtable);
  MM_ASSERT(dtable.rank() == 2, "embedding dtable ", shape_string(dtable.shape()));
  scatter_add(*this, ids, dout, vocab_offset, dtable);
}

void CudaBackend::rope(Tensor& x, const Tensor& positions, float theta, bool inverse) {
  check_on_device(x, "rope");
  check_on_device(positions, "rope");
  MM_ASSERT(x.rank() == 4, "rope wants x [batch, seq, heads, head_dim], got ",
            shape_string(x.shape()));
  const std::int64_t seq = x.dim(1), heads = x.dim(2), dim = x.dim(3);
  MM_ASSERT(positions.numel() == seq && positions.dtype() == DType::i32, "rope positions ",
            shape_string(positions.shape()), " for seq ", seq);
  require(dim % 2 == 0, "rotary embedding needs an even head_dim, got ", dim);
  require(std::isfinite(theta) && theta > 0.0f, "rope_theta ", theta, " must be positive");
  const std::int64_t pairs = x.numel() / 2, half = dim / 2;
  if (pairs == 0) return;
  Tensor table = empty({2, seq, half});  // cos, then sin
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
    constexpr int V = kPerWord16<T>;
    if (half % V == 0 && aligned16(x.raw(), cos_table, sin_table))
      rope_kernel<T, V><<<grid_for(pairs / V), kThreads>>>(mptr<T>(x), cos_table, sin_table, seq,
                                                           heads, half, sign, pairs / V);
    else
      rope_kernel<T, 1><<<grid_for(pairs), kThreads>>>(mptr<T>(x), cos_table, sin_table, seq, heads,
                                                       half, sign, pairs);
  });
  MM_CUDA_CHECK_LAUNCH();
}

}  // namespace metamorph::cuda

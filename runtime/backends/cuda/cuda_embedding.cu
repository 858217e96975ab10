// Embedding lookups (whole and vocabulary-sharded) of the CUDA backend.
#include <cstdint>

#include <cub/device/device_radix_sort.cuh>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_id_check.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

namespace {

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

// Ids come from data files, so a bad one is the user's error, named with its position.
void report_bad_id(const Tensor& ids, std::int64_t vocab, long long first_bad) {
  if (const auto id = bad_id_at(ids, first_bad))
    require(false, "token id ", *id, " at position ", first_bad, " is outside the vocabulary [0, ",
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
  // The lookup writes zeros for ids outside the table, so it may run before the download.
  report_bad_id(ids, table.dim(0), wait_for_id_check(*this, ids, table.dim(0), std::nullopt, [&] {
                  lookup(table, ids, 0, out);
                }));
}

void CudaBackend::embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  check_all_on_device("embedding_backward", ids, dout, dtable);
  MM_ASSERT(dtable.rank() == 2, "embedding dtable ", shape_string(dtable.shape()));
  // Checked before it adds: a bad id leaves the gradient as it was.
  report_bad_id(ids, dtable.dim(0), wait_for_id_check(*this, ids, dtable.dim(0), std::nullopt));
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

}  // namespace metamorph::cuda

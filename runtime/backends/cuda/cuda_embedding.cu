// Embedding lookups (whole and vocabulary-sharded) of the CUDA backend.
#include <climits>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"

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

// One thread per column walks the tokens in order: repeated ids accumulate without atomics and
// in the same order every run. Parallel over columns only; fine for hidden sizes in the
// thousands.
template <class D, class T>
__global__ void embedding_backward_kernel(const std::int32_t* ids, const D* dout,
                                          std::int64_t offset, std::int64_t rows,
                                          std::int64_t tokens, std::int64_t hidden, T* dtable) {
  const std::int64_t c = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (c >= hidden) return;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const std::int64_t row = static_cast<std::int64_t>(ids[t]) - offset;
    if (row < 0 || row >= rows) continue;
    T* cell = dtable + row * hidden + c;
    *cell = from_float<T>(to_float(*cell) + to_float(dout[t * hidden + c]));
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

void scatter_add(const Tensor& ids, const Tensor& dout, std::int64_t offset, Tensor& dtable) {
  const std::int64_t rows = dtable.dim(0), hidden = dtable.dim(1), tokens = ids.numel();
  MM_ASSERT(dout.numel() == tokens * hidden, "embedding_backward dout ", shape_string(dout.shape()),
            " for ", tokens, " ids of width ", hidden);
  if (tokens * hidden == 0) return;
  dispatch_float(dout.dtype(), "embedding_backward", [&](auto dt) {
    using D = decltype(dt);
    dispatch_float(dtable.dtype(), "embedding_backward", [&](auto tt) {
      using T = decltype(tt);
      embedding_backward_kernel<<<static_cast<unsigned>((hidden + kThreads - 1) / kThreads),
                                  kThreads>>>(cptr<std::int32_t>(ids), cptr<D>(dout), offset, rows,
                                              tokens, hidden, mptr<T>(dtable));
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
  scatter_add(ids, dout, 0, dtable);
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
  scatter_add(ids, dout, vocab_offset, dtable);
}

}  // namespace metamorph::cuda

// Softmax cross-entropy of the CUDA backend, whole-vocabulary and vocabulary-sharded, each with
// optional per-row weights (block diffusion's 1/t). One block per row streams the row's logits
// (bf16 or f32) in 16-byte runs where the row allows (vocabulary a multiple of 8, aligned rows),
// once forward with an online max/sum and once backward, so no f32 copy of the logits is ever
// made; per-row losses are summed in double in a fixed order. The forward's loss sum and the
// targets' check come back in one download: each host wait leaves the GPU idle until the host
// has queued the next kernels.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_id_check.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

constexpr float kNegInf = -INFINITY;

// Calls body(col, v) for the block's share of a row of `cols` elements: runs of kRun elements
// (v a float[kRun]) when `vectorised`, else single elements (v a float[1]); thread i takes runs
// i, i + blockDim.x, ... Unrolled so that a thread keeps several 16-byte loads in flight.
template <class T, class Body>
__device__ __forceinline__ void for_each_run_of_row(const T* row, std::int64_t cols,
                                                    bool vectorised, Body body) {
  if (vectorised) {
    const std::int64_t runs = cols / kRun;
#pragma unroll 4
    for (std::int64_t r = threadIdx.x; r < runs; r += blockDim.x) {
      float v[kRun];
      load_run<kRun>(row + r * kRun, v);
      body(r * kRun, v);
    }
  } else {
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v[1];
      load_run<1>(row + c, v);
      body(c, v);
    }
  }
}

template <class V>
constexpr int kWidth = static_cast<int>(std::extent_v<std::remove_reference_t<V>>);

// The 16-byte path's condition for rows of `cols` elements starting at these pointers.
template <class... Ptrs>
bool rows_vectorised(std::int64_t cols, const Ptrs*... ptrs) {
  return cols % kRun == 0 && aligned16(ptrs...);
}

// This thread's (max, sum of exp(x - max)) over its runs of the row, merged over the block:
// returns the row's log-sum-exp.
template <class T>
__device__ float row_logsumexp(const T* row, std::int64_t vocab, bool vectorised, float* scratch) {
  float m = kNegInf, s = 0.0f;
  for_each_run_of_row(row, vocab, vectorised, [&](std::int64_t, const auto& v) {
    constexpr int W = kWidth<decltype(v)>;
    float run_max = v[0];
#pragma unroll
    for (int j = 1; j < W; ++j) run_max = fmaxf(run_max, v[j]);
    if (run_max > m) {
      s *= __expf(m - run_max);
      m = run_max;
    }
    if (m == kNegInf) return;
#pragma unroll
    for (int j = 0; j < W; ++j) s += __expf(v[j] - m);
  });
  const float row_max = block_max(m, scratch);
  const float part = m == kNegInf ? 0.0f : s * __expf(m - row_max);
  const float total = block_sum(part, scratch);
  return row_max + logf(total);
}

// A target outside the vocabulary reads nothing here: the host reports it after the download.
template <class T>
__global__ void ce_forward_kernel(const T* logits, const std::int32_t* targets,
                                  const float* weights, std::int32_t ignore_index,
                                  std::int64_t vocab, bool vectorised, float* lse, double* loss) {
  __shared__ float scratch[kThreads / 32];
  const std::int64_t r = blockIdx.x;
  const T* row = logits + r * vocab;
  const float row_lse = row_logsumexp(row, vocab, vectorised, scratch);
  if (threadIdx.x == 0) {
    lse[r] = row_lse;
    const std::int32_t t = targets[r];
    double l = 0.0;
    if (t != ignore_index && t >= 0 && t < vocab) {
      l = static_cast<double>(row_lse) - static_cast<double>(to_float(row[t]));
      if (weights != nullptr) l *= static_cast<double>(weights[r]);
    }
    loss[r] = l;
  }
}

// dlogits = scale * (softmax - onehot), in one pass from the forward's lse (rounded to f32: the
// probabilities sum to 1 within a few f32 ulps, which the bf16 or f32 dlogits cannot show; the CPU
// reference renormalises by their sum). dlogits may alias logits: each element is read and
// written by the same thread. `local_target`: the target's column in this (shard of the) row, or
// -1 where the row's target lies elsewhere; an ignored row is all zeros.
template <class T, class D>
__device__ __forceinline__ void softmax_grad_row(const T* row, D* drow, std::int64_t vocab,
                                                 bool vectorised, bool ignored,
                                                 std::int64_t local_target, float row_lse,
                                                 float scale) {
  for_each_run_of_row(row, vocab, vectorised, [&](std::int64_t c, const auto& v) {
    constexpr int W = kWidth<decltype(v)>;
    float d[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      d[j] = ignored ? 0.0f : scale * __expf(v[j] - row_lse);
      if (!ignored && c + j == local_target) d[j] -= scale;
    }
    store_run<W>(drow + c, d);
  });
}

template <class T, class D>
__global__ void ce_backward_kernel(const T* logits, const std::int32_t* targets, const float* lse,
                                   const float* weights, std::int32_t ignore_index,
                                   float grad_scale, std::int64_t vocab, bool vectorised,
                                   D* dlogits) {
  const std::int64_t r = blockIdx.x;
  const std::int32_t t = targets[r];
  const float scale = weights != nullptr ? grad_scale * weights[r] : grad_scale;
  softmax_grad_row(logits + r * vocab, dlogits + r * vocab, vocab, vectorised, t == ignore_index, t,
                   lse[r], scale);
}

template <class T>
__global__ void row_max_kernel(const T* x, std::int64_t cols, bool vectorised, float* out) {
  __shared__ float scratch[kThreads / 32];
  const T* row = x + blockIdx.x * cols;
  float m = kNegInf;
  for_each_run_of_row(row, cols, vectorised, [&](std::int64_t, const auto& v) {
#pragma unroll
    for (int j = 0; j < kWidth<decltype(v)>; ++j) m = fmaxf(m, v[j]);
  });
  m = block_max(m, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = m;
}

template <class T>
__global__ void ce_stats_kernel(const T* logits, const std::int32_t* targets,
                                std::int64_t vocab_offset, const float* max, std::int64_t vocab,
                                bool vectorised, float* sum_exp, float* target_logit) {
  __shared__ float scratch[kThreads / 32];
  const std::int64_t r = blockIdx.x;
  const T* row = logits + r * vocab;
  const float m = max[r];
  float sum = 0.0f;
  for_each_run_of_row(row, vocab, vectorised, [&](std::int64_t, const auto& v) {
#pragma unroll
    for (int j = 0; j < kWidth<decltype(v)>; ++j) sum += __expf(v[j] - m);
  });
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) {
    sum_exp[r] = sum;
    const std::int64_t local = static_cast<std::int64_t>(targets[r]) - vocab_offset;
    target_logit[r] = local >= 0 && local < vocab ? to_float(row[local]) : 0.0f;
  }
}

// weights: per-row loss weights, or nullptr for 1 (the loss is weight * (lse - target logit) in
// double, as the CPU reference computes it).
__global__ void ce_finish_kernel(const float* max, const float* sum_exp, const float* target_logit,
                                 const std::int32_t* targets, const float* weights,
                                 std::int32_t ignore_index, std::int64_t tokens, float* lse,
                                 double* loss) {
  const std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (r >= tokens) return;
  const double row_lse = static_cast<double>(max[r]) + log(static_cast<double>(sum_exp[r]));
  lse[r] = static_cast<float>(row_lse);
  double l = 0.0;
  if (targets[r] != ignore_index) {
    l = row_lse - target_logit[r];
    if (weights != nullptr) l *= static_cast<double>(weights[r]);
  }
  loss[r] = l;
}

// weights: per-row gradient weights, or nullptr for 1.
template <class T, class D>
__global__ void ce_backward_sharded_kernel(const T* logits, const std::int32_t* targets,
                                           const float* lse, const float* weights,
                                           std::int32_t ignore_index, std::int64_t vocab_offset,
                                           float grad_scale, std::int64_t vocab, bool vectorised,
                                           D* dlogits) {
  const std::int64_t r = blockIdx.x;
  const std::int32_t t = targets[r];
  const std::int64_t local = static_cast<std::int64_t>(t) - vocab_offset;
  const float scale = weights != nullptr ? grad_scale * weights[r] : grad_scale;
  softmax_grad_row(logits + r * vocab, dlogits + r * vocab, vocab, vectorised, t == ignore_index,
                   local >= 0 && local < vocab ? local : -1, lse[r], scale);
}

struct CeShape {
  std::int64_t tokens;
  std::int64_t vocab;
};

CeShape ce_shape(const Tensor& logits, const Tensor& targets, const Tensor& lse) {
  check_all_on_device("cross-entropy", logits, targets, lse);
  MM_ASSERT(logits.rank() == 2, "cross-entropy wants logits [tokens, vocab], got ",
            shape_string(logits.shape()));
  const CeShape s{logits.dim(0), logits.dim(1)};
  MM_ASSERT(targets.numel() == s.tokens && lse.numel() == s.tokens &&
                targets.dtype() == DType::i32 && lse.dtype() == DType::f32,
            "cross-entropy targets ", shape_string(targets.shape()), " lse ",
            shape_string(lse.shape()), " for logits ", shape_string(logits.shape()));
  require(s.vocab > 0 || s.tokens == 0, "cross-entropy over an empty vocabulary");
  MM_ASSERT(s.tokens < (std::int64_t{1} << 31), "cross-entropy rows ", s.tokens);
  return s;
}

// Target ids come from data files, so a bad one is the user's error, named with its row.
void report_bad_target(const Tensor& targets, const CeShape& s, std::int32_t ignore_index,
                       long long row) {
  if (const auto id = bad_id_at(targets, row))
    require(false, "target id ", *id, " at token ", row, " is outside the vocabulary [0, ", s.vocab,
            ") and is not the ignore index ", ignore_index);
}

const float* row_weights(const Tensor* weights, const Tensor& targets) {
  if (weights == nullptr) return nullptr;
  check_on_device(*weights, "cross-entropy weights");
  MM_ASSERT(weights->numel() == targets.numel() && weights->dtype() == DType::f32,
            "cross-entropy weights ", shape_string(weights->shape()), " for targets ",
            shape_string(targets.shape()));
  return cptr<float>(*weights);
}

double ce_forward(CudaBackend& backend, const Tensor& logits, const Tensor& targets,
                  const Tensor* weights, std::int32_t ignore_index, Tensor& lse) {
  const CeShape s = ce_shape(logits, targets, lse);
  const float* w = row_weights(weights, targets);
  if (s.tokens == 0) return 0.0;
  Tensor loss = backend.empty({s.tokens}, DType::i64);  // doubles
  // Downloaded together: the loss sum (a double) and the first bad target's row.
  Tensor results = backend.empty({2}, DType::i64);
  auto* first_bad = static_cast<long long*>(results.raw()) + 1;
  launch_id_check(targets, s.vocab, ignore_index, first_bad);
  const bool vectorised = rows_vectorised(s.vocab, logits.raw());
  dispatch_float(logits.dtype(), "cross_entropy_forward", [&](auto t) {
    using T = decltype(t);
    ce_forward_kernel<<<static_cast<unsigned>(s.tokens), kThreads>>>(
        cptr<T>(logits), cptr<std::int32_t>(targets), w, ignore_index, s.vocab, vectorised,
        mptr<float>(lse), static_cast<double*>(loss.raw()));
  });
  MM_CUDA_CHECK_LAUNCH();
  backend.sum_doubles_on_device(loss, static_cast<double*>(results.raw()));
  std::int64_t host[2] = {};
  MM_CUDA_CHECK(cudaMemcpy(host, results.raw(), sizeof host, cudaMemcpyDeviceToHost));
  report_bad_target(targets, s, ignore_index, host[1]);
  double sum = 0.0;
  std::memcpy(&sum, &host[0], sizeof sum);
  return sum;
}

void ce_backward(CudaBackend& backend, const Tensor& logits, const Tensor& targets,
                 const Tensor& lse, const Tensor* weights, std::int32_t ignore_index,
                 float grad_scale, Tensor& dlogits) {
  const CeShape s = ce_shape(logits, targets, lse);
  check_on_device(dlogits, "cross_entropy_backward");
  MM_ASSERT(dlogits.numel() == logits.numel(), "cross-entropy dlogits ",
            shape_string(dlogits.shape()));
  MM_ASSERT(!dlogits.same_storage(logits) || dlogits.dtype() == logits.dtype(),
            "in-place cross-entropy backward needs one dtype");
  const float* w = row_weights(weights, targets);
  if (s.tokens == 0) return;
  // The kernel reads no logit at a target's column, so it may run before the check's download.
  const bool vectorised = rows_vectorised(s.vocab, logits.raw(), dlogits.raw());
  const auto backward = [&] {
    dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto lt) {
      using T = decltype(lt);
      dispatch_float(dlogits.dtype(), "cross_entropy_backward", [&](auto dt) {
        using D = decltype(dt);
        ce_backward_kernel<<<static_cast<unsigned>(s.tokens), kThreads>>>(
            cptr<T>(logits), cptr<std::int32_t>(targets), cptr<float>(lse), w, ignore_index,
            grad_scale, s.vocab, vectorised, mptr<D>(dlogits));
      });
    });
    MM_CUDA_CHECK_LAUNCH();
  };
  report_bad_target(targets, s, ignore_index,
                    wait_for_id_check(backend, targets, s.vocab, ignore_index, backward));
}

// The vocabulary-parallel finish: lse from the all-reduced statistics, the (weighted) loss sum.
double ce_finish(CudaBackend& backend, const Tensor& max, const Tensor& sum_exp,
                 const Tensor& target_logit, const Tensor& targets, const Tensor* weights,
                 std::int32_t ignore_index, Tensor& lse) {
  check_all_on_device("cross_entropy_finish", max, sum_exp, target_logit, targets, lse);
  const std::int64_t tokens = targets.numel();
  MM_ASSERT(max.numel() == tokens && sum_exp.numel() == tokens && target_logit.numel() == tokens &&
                lse.numel() == tokens,
            "cross_entropy_finish shapes for ", tokens, " tokens");
  const float* w = row_weights(weights, targets);
  if (tokens == 0) return 0.0;
  Tensor loss = backend.empty({tokens}, DType::i64);  // doubles
  ce_finish_kernel<<<grid_for(tokens), kThreads>>>(
      cptr<float>(max), cptr<float>(sum_exp), cptr<float>(target_logit),
      cptr<std::int32_t>(targets), w, ignore_index, tokens, mptr<float>(lse),
      static_cast<double*>(loss.raw()));
  MM_CUDA_CHECK_LAUNCH();
  return backend.sum_doubles(loss);
}

// The backward over a vocabulary shard; dlogits may be logits.
void ce_backward_sharded(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                         const Tensor* weights, std::int32_t ignore_index,
                         std::int64_t vocab_offset, float grad_scale, Tensor& dlogits) {
  check_all_on_device("cross_entropy_backward_sharded", logits, targets, lse, dlogits);
  const std::int64_t tokens = logits.dim(0), vocab = logits.dim(1);
  MM_ASSERT(dlogits.numel() == logits.numel() && targets.numel() == tokens && lse.numel() == tokens,
            "cross_entropy_backward_sharded shapes for logits ", shape_string(logits.shape()));
  MM_ASSERT(!dlogits.same_storage(logits) || dlogits.dtype() == logits.dtype(),
            "in-place cross-entropy backward needs one dtype");
  const float* w = row_weights(weights, targets);
  if (tokens == 0) return;
  dispatch_float(logits.dtype(), "cross_entropy_backward_sharded", [&](auto lt) {
    using T = decltype(lt);
    dispatch_float(dlogits.dtype(), "cross_entropy_backward_sharded", [&](auto dt) {
      using D = decltype(dt);
      ce_backward_sharded_kernel<<<static_cast<unsigned>(tokens), kThreads>>>(
          cptr<T>(logits), cptr<std::int32_t>(targets), cptr<float>(lse), w, ignore_index,
          vocab_offset, grad_scale, vocab, rows_vectorised(vocab, logits.raw(), dlogits.raw()),
          mptr<D>(dlogits));
    });
  });
  MM_CUDA_CHECK_LAUNCH();
}

}  // namespace

double CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                          std::int32_t ignore_index, Tensor& lse) {
  return ce_forward(*this, logits, targets, nullptr, ignore_index, lse);
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                         const Tensor& lse, std::int32_t ignore_index,
                                         float grad_scale, Tensor& dlogits) {
  ce_backward(*this, logits, targets, lse, nullptr, ignore_index, grad_scale, dlogits);
}

double CudaBackend::weighted_cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                                   const Tensor& weights, std::int32_t ignore_index,
                                                   Tensor& lse) {
  return ce_forward(*this, logits, targets, &weights, ignore_index, lse);
}

void CudaBackend::weighted_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                                  const Tensor& lse, const Tensor& weights,
                                                  std::int32_t ignore_index, float grad_scale,
                                                  Tensor& dlogits) {
  ce_backward(*this, logits, targets, lse, &weights, ignore_index, grad_scale, dlogits);
}

void CudaBackend::row_max(const Tensor& x, Tensor& out) {
  check_on_device(x, "row_max");
  check_on_device(out, "row_max");
  const std::int64_t cols = x.dim(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  MM_ASSERT(out.numel() == rows && out.dtype() == DType::f32, "row_max out ",
            shape_string(out.shape()));
  if (rows == 0) return;
  dispatch_float(x.dtype(), "row_max", [&](auto t) {
    using T = decltype(t);
    row_max_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
        cptr<T>(x), cols, rows_vectorised(cols, x.raw()), mptr<float>(out));
  });
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::cross_entropy_stats(const Tensor& logits, const Tensor& targets,
                                      std::int64_t vocab_offset, const Tensor& max, Tensor& sum_exp,
                                      Tensor& target_logit) {
  check_all_on_device("cross_entropy_stats", logits, targets, max, sum_exp, target_logit);
  const std::int64_t tokens = logits.dim(0), vocab = logits.dim(1);
  MM_ASSERT(targets.numel() == tokens && max.numel() == tokens && sum_exp.numel() == tokens &&
                target_logit.numel() == tokens,
            "cross_entropy_stats shapes for logits ", shape_string(logits.shape()));
  if (tokens == 0) return;
  dispatch_float(logits.dtype(), "cross_entropy_stats", [&](auto t) {
    using T = decltype(t);
    ce_stats_kernel<<<static_cast<unsigned>(tokens), kThreads>>>(
        cptr<T>(logits), cptr<std::int32_t>(targets), vocab_offset, cptr<float>(max), vocab,
        rows_vectorised(vocab, logits.raw()), mptr<float>(sum_exp), mptr<float>(target_logit));
  });
  MM_CUDA_CHECK_LAUNCH();
}

double CudaBackend::cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                         const Tensor& target_logit, const Tensor& targets,
                                         std::int32_t ignore_index, Tensor& lse) {
  return ce_finish(*this, max, sum_exp, target_logit, targets, nullptr, ignore_index, lse);
}

void CudaBackend::cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                                 const Tensor& lse, std::int32_t ignore_index,
                                                 std::int64_t vocab_offset, float grad_scale,
                                                 Tensor& dlogits) {
  ce_backward_sharded(logits, targets, lse, nullptr, ignore_index, vocab_offset, grad_scale,
                      dlogits);
}

double CudaBackend::weighted_cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                                  const Tensor& target_logit, const Tensor& targets,
                                                  const Tensor& weights, std::int32_t ignore_index,
                                                  Tensor& lse) {
  return ce_finish(*this, max, sum_exp, target_logit, targets, &weights, ignore_index, lse);
}

void CudaBackend::weighted_cross_entropy_backward_sharded(
    const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& weights,
    std::int32_t ignore_index, std::int64_t vocab_offset, float grad_scale, Tensor& dlogits) {
  ce_backward_sharded(logits, targets, lse, &weights, ignore_index, vocab_offset, grad_scale,
                      dlogits);
}

}  // namespace metamorph::cuda

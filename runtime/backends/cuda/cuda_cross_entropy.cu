// Softmax cross-entropy of the CUDA backend, whole-vocabulary and vocabulary-sharded, each with
// optional per-row weights (block diffusion's 1/t). One block per row streams the row's logits
// (bf16 or f32) once with an online max/sum, so no f32 copy of the logits is ever made; per-row
// losses are summed in double in a fixed order.
#include <climits>
#include <cmath>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

namespace {

constexpr float kNegInf = -INFINITY;

// This thread's (max, sum of exp(x - max)) over the row's columns it visits, merged over the
// block: returns the row's log-sum-exp.
template <class T>
__device__ float row_logsumexp(const T* row, std::int64_t vocab, float* scratch) {
  float m = kNegInf, s = 0.0f;
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    const float v = to_float(row[c]);
    if (v > m) {
      s = s * __expf(m - v) + 1.0f;
      m = v;
    } else {
      s += __expf(v - m);
    }
  }
  const float row_max = block_max(m, scratch);
  const float part = m == kNegInf ? 0.0f : s * __expf(m - row_max);
  const float total = block_sum(part, scratch);
  return row_max + logf(total);
}

template <class T>
__global__ void ce_forward_kernel(const T* logits, const std::int32_t* targets,
                                  const float* weights, std::int32_t ignore_index,
                                  std::int64_t vocab, float* lse, double* loss) {
  __shared__ float scratch[kThreads / 32];
  const std::int64_t r = blockIdx.x;
  const T* row = logits + r * vocab;
  const float row_lse = row_logsumexp(row, vocab, scratch);
  if (threadIdx.x == 0) {
    lse[r] = row_lse;
    const std::int32_t t = targets[r];
    double l = 0.0;
    if (t != ignore_index) {
      l = static_cast<double>(row_lse) - static_cast<double>(to_float(row[t]));
      if (weights != nullptr) l *= static_cast<double>(weights[r]);
    }
    loss[r] = l;
  }
}

// dlogits = scale * (softmax - onehot); lse was rounded to f32, so the probabilities are
// renormalised by their sum (as the CPU reference does). dlogits may alias logits: each element
// is read and written by the same thread.
template <class T, class D>
__global__ void ce_backward_kernel(const T* logits, const std::int32_t* targets, const float* lse,
                                   const float* weights, std::int32_t ignore_index,
                                   float grad_scale, std::int64_t vocab, D* dlogits) {
  __shared__ float scratch[kThreads / 32];
  const std::int64_t r = blockIdx.x;
  const T* row = logits + r * vocab;
  D* drow = dlogits + r * vocab;
  const std::int32_t t = targets[r];
  if (t == ignore_index) {
    for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) drow[c] = from_float<D>(0.0f);
    return;
  }
  const float row_lse = lse[r];
  float sum = 0.0f;
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x)
    sum += __expf(to_float(row[c]) - row_lse);
  sum = block_sum(sum, scratch);
  const float scale = weights != nullptr ? grad_scale * weights[r] : grad_scale;
  const float factor = scale / sum;
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    const float p = __expf(to_float(row[c]) - row_lse) * factor;
    drow[c] = from_float<D>(c == t ? p - scale : p);
  }
}

template <class T>
__global__ void row_max_kernel(const T* x, std::int64_t cols, float* out) {
  __shared__ float scratch[kThreads / 32];
  const T* row = x + blockIdx.x * cols;
  float m = kNegInf;
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, to_float(row[c]));
  m = block_max(m, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = m;
}

template <class T>
__global__ void ce_stats_kernel(const T* logits, const std::int32_t* targets,
                                std::int64_t vocab_offset, const float* max, std::int64_t vocab,
                                float* sum_exp, float* target_logit) {
  __shared__ float scratch[kThreads / 32];
  const std::int64_t r = blockIdx.x;
  const T* row = logits + r * vocab;
  const float m = max[r];
  float sum = 0.0f;
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x)
    sum += __expf(to_float(row[c]) - m);
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
                                           float grad_scale, std::int64_t vocab, D* dlogits) {
  const std::int64_t r = blockIdx.x;
  const T* row = logits + r * vocab;
  D* drow = dlogits + r * vocab;
  const std::int32_t t = targets[r];
  const bool ignored = t == ignore_index;
  const std::int64_t local = static_cast<std::int64_t>(t) - vocab_offset;
  const float row_lse = lse[r];
  const float scale = weights != nullptr ? grad_scale * weights[r] : grad_scale;
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    float d = 0.0f;
    if (!ignored) {
      d = scale * __expf(to_float(row[c]) - row_lse);
      if (c == local) d -= scale;
    }
    drow[c] = from_float<D>(d);
  }
}

__global__ void find_bad_target_kernel(const std::int32_t* targets, std::int64_t tokens,
                                       std::int64_t vocab, std::int32_t ignore_index,
                                       long long* first_bad) {
  for (std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; r < tokens;
       r += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int32_t t = targets[r];
    if (t != ignore_index && (t < 0 || t >= vocab)) atomicMin(first_bad, static_cast<long long>(r));
  }
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
void check_targets(CudaBackend& backend, const Tensor& targets, const CeShape& s,
                   std::int32_t ignore_index) {
  if (s.tokens == 0) return;
  Tensor first_bad = backend.empty({1}, DType::i64);
  const long long none = LLONG_MAX;
  MM_CUDA_CHECK(cudaMemcpy(first_bad.raw(), &none, sizeof none, cudaMemcpyHostToDevice));
  find_bad_target_kernel<<<grid_for(s.tokens), kThreads>>>(
      cptr<std::int32_t>(targets), s.tokens, s.vocab, ignore_index,
      static_cast<long long*>(first_bad.raw()));
  MM_CUDA_CHECK_LAUNCH();
  long long row = 0;
  MM_CUDA_CHECK(cudaMemcpy(&row, first_bad.raw(), sizeof row, cudaMemcpyDeviceToHost));
  if (row == LLONG_MAX) return;
  std::int32_t id = 0;
  MM_CUDA_CHECK(
      cudaMemcpy(&id, cptr<std::int32_t>(targets) + row, sizeof id, cudaMemcpyDeviceToHost));
  require(false, "target id ", id, " at token ", row, " is outside the vocabulary [0, ", s.vocab,
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
  check_targets(backend, targets, s, ignore_index);
  if (s.tokens == 0) return 0.0;
  Tensor loss = backend.empty({s.tokens}, DType::i64);  // doubles
  dispatch_float(logits.dtype(), "cross_entropy_forward", [&](auto t) {
    using T = decltype(t);
    ce_forward_kernel<<<static_cast<unsigned>(s.tokens), kThreads>>>(
        cptr<T>(logits), cptr<std::int32_t>(targets), w, ignore_index, s.vocab, mptr<float>(lse),
        static_cast<double*>(loss.raw()));
  });
  MM_CUDA_CHECK_LAUNCH();
  return backend.sum_doubles(loss);
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
  check_targets(backend, targets, s, ignore_index);
  if (s.tokens == 0) return;
  dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto lt) {
    using T = decltype(lt);
    dispatch_float(dlogits.dtype(), "cross_entropy_backward", [&](auto dt) {
      using D = decltype(dt);
      ce_backward_kernel<<<static_cast<unsigned>(s.tokens), kThreads>>>(
          cptr<T>(logits), cptr<std::int32_t>(targets), cptr<float>(lse), w, ignore_index,
          grad_scale, s.vocab, mptr<D>(dlogits));
    });
  });
  MM_CUDA_CHECK_LAUNCH();
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
          vocab_offset, grad_scale, vocab, mptr<D>(dlogits));
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
    row_max_kernel<<<static_cast<unsigned>(rows), kThreads>>>(cptr<T>(x), cols, mptr<float>(out));
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
        mptr<float>(sum_exp), mptr<float>(target_logit));
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

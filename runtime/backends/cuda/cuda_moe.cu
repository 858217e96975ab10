// Mixture-of-Experts ops of the CUDA backend: router scores and top-k (one thread per token,
// router math in double as on the CPU), the stable sort of token slots by expert, row gathers,
// the deterministic un-permutation and the small helpers around them. No float atomics: every
// output element is written by one thread, and every sum runs in a fixed order.
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_vector_access.cuh"

namespace metamorph::cuda {

namespace {

// Whether expert a with key ka ranks before expert b with key kb: larger key first, ties to the
// lower id (the CPU's partial_sort order).
__device__ __forceinline__ bool ranks_before(double ka, int a, double kb, int b) {
  return ka > kb || (ka == kb && a < b);
}

__device__ __forceinline__ double choice_key(const float* l, const float* score, const float* bias,
                                             bool sigmoid, std::int64_t e) {
  // The CPU stores the key in double from f32 values: the logit, or score + bias in f32.
  return sigmoid ? static_cast<double>(score[e] + (bias != nullptr ? bias[e] : 0.0f))
                 : static_cast<double>(l[e]);
}

// One thread per token: logsumexp, scores, top-k by k selection passes (no per-thread arrays,
// so any E works) or the balanced assignment (force_balance), gates; z-loss and entropy terms
// per token for a fixed-order sum afterwards.
__global__ void router_forward_kernel(const float* logits, const float* bias, std::int64_t tokens,
                                      std::int64_t E, std::int64_t k, bool sigmoid,
                                      bool renormalise, bool force_balance, std::int32_t* expert,
                                      float* gate, float* prob, float* score, float* lse_out,
                                      double* z_term, double* entropy_term) {
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < tokens;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    const float* l = logits + t * E;
    double max = l[0];
    for (std::int64_t e = 1; e < E; ++e) max = fmax(max, static_cast<double>(l[e]));
    double sum = 0.0;
    for (std::int64_t e = 0; e < E; ++e) sum += exp(static_cast<double>(l[e]) - max);
    const double lse = max + log(sum);
    lse_out[t] = static_cast<float>(lse);
    z_term[t] = lse * lse;
    float* p = prob + t * E;
    float* s = sigmoid ? score + t * E : nullptr;
    if (sigmoid) {
      double total = 0.0;
      for (std::int64_t e = 0; e < E; ++e) {
        s[e] = static_cast<float>(1.0 / (1.0 + exp(-static_cast<double>(l[e]))));
        total += s[e];
      }
      for (std::int64_t e = 0; e < E; ++e) p[e] = static_cast<float>(s[e] / total);
    } else {
      for (std::int64_t e = 0; e < E; ++e)
        p[e] = static_cast<float>(exp(static_cast<double>(l[e]) - lse));
    }
    const float* base = sigmoid ? s : p;
    double entropy = 0.0;
    for (std::int64_t e = 0; e < E; ++e) {
      const double pe = p[e];
      if (pe > 0) entropy -= pe * log(pe);
    }
    entropy_term[t] = entropy;
    // Pass j picks the best expert ranking after pass j-1's choice.
    double prev_key = 0.0, selected = 0.0;
    int prev = -1;
    for (std::int64_t j = 0; j < k; ++j) {
      if (force_balance) {
        const std::int32_t chosen = balanced_expert(t, j, k, E);
        expert[t * k + j] = chosen;
        selected += base[chosen];
        continue;
      }
      int best = -1;
      double best_key = 0.0;
      for (std::int64_t e = 0; e < E; ++e) {
        const double key = choice_key(l, s, bias, sigmoid, e);
        const int id = static_cast<int>(e);
        if (prev >= 0 && !ranks_before(prev_key, prev, key, id)) continue;
        if (best < 0 || ranks_before(key, id, best_key, best)) {
          best = id;
          best_key = key;
        }
      }
      // Only NaN keys leave nothing to pick; stay in bounds (the NaN reaches the loss anyway).
      if (best < 0) best = 0;
      expert[t * k + j] = best;
      selected += base[best];
      prev = best;
      prev_key = best_key;
    }
    const double divisor = renormalise ? selected : 1.0;
    for (std::int64_t j = 0; j < k; ++j)
      gate[t * k + j] = static_cast<float>(base[expert[t * k + j]] / divisor);
  }
}

// Block e: the sum over tokens of prob[:, e] (double, fixed tree order) and the slots routed to
// e (integers).
__global__ void router_columns_kernel(const float* prob, const std::int32_t* expert,
                                      std::int64_t tokens, std::int64_t E, std::int64_t k,
                                      double* prob_sum, long long* counts) {
  __shared__ double scratch[kThreads / 32];
  __shared__ long long count_scratch[kThreads / 32];
  const std::int64_t e = blockIdx.x;
  double sum = 0.0;
  long long count = 0;
  for (std::int64_t t = threadIdx.x; t < tokens; t += blockDim.x) sum += prob[t * E + e];
  for (std::int64_t i = threadIdx.x; i < tokens * k; i += blockDim.x) count += expert[i] == e;
  sum = block_sum(sum, scratch);
  count = block_sum(count, count_scratch);
  if (threadIdx.x == 0) {
    prob_sum[e] = sum;
    counts[e] = count;
  }
}

__global__ void router_backward_kernel(const float* logits, std::int64_t tokens, std::int64_t E,
                                       std::int64_t k, bool sigmoid, bool renormalise,
                                       const std::int32_t* expert, const float* gate,
                                       const float* prob, const float* score, const float* lse_in,
                                       const double* daux, double dz_coef, bool z_loss,
                                       const float* dgate_rows, const std::int32_t* slot_row,
                                       float* dlogits) {
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < tokens;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    const float* base = sigmoid ? score + t * E : prob + t * E;
    const std::int32_t* ex = expert + t * k;
    auto dgate = [&](std::int64_t j) {
      const std::int32_t row = slot_row[t * k + j];
      return row >= 0 ? dgate_rows[row] : 0.0f;
    };
    double selected = 0.0, gate_dot = 0.0;
    if (renormalise)
      for (std::int64_t j = 0; j < k; ++j) {
        selected += base[ex[j]];
        gate_dot += static_cast<double>(dgate(j)) * gate[t * k + j];
      }
    // dbase_e: the selected slots' gate gradients (the k slots hold distinct experts).
    auto dbase = [&](std::int64_t e) {
      double d = 0.0;
      for (std::int64_t j = 0; j < k; ++j)
        if (ex[j] == e) d += renormalise ? (dgate(j) - gate_dot) / selected : dgate(j);
      return d;
    };
    float* dl = dlogits + t * E;
    const float* l = logits + t * E;
    if (sigmoid) {
      double total = 0.0, dot = 0.0;
      for (std::int64_t e = 0; e < E; ++e) {
        total += base[e];
        dot += daux[e] * prob[t * E + e];
      }
      for (std::int64_t e = 0; e < E; ++e) {
        const double ds = dbase(e) + (daux[e] - dot) / total;
        dl[e] = static_cast<float>(ds * base[e] * (1.0 - base[e]));
      }
    } else {
      double dot = 0.0;
      for (std::int64_t e = 0; e < E; ++e) dot += (dbase(e) + daux[e]) * base[e];
      for (std::int64_t e = 0; e < E; ++e)
        dl[e] = static_cast<float>(base[e] * (dbase(e) + daux[e] - dot));
    }
    if (z_loss) {
      const double lse = lse_in[t];
      for (std::int64_t e = 0; e < E; ++e)
        dl[e] += static_cast<float>(dz_coef * lse * exp(static_cast<double>(l[e]) - lse));
    }
  }
}

__global__ void fill_i32_kernel(std::int32_t* x, std::int64_t n, std::int32_t value) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    x[i] = value;
}

// Block e walks the slots in order and numbers the slots routed to e with a block-wide prefix
// count: a stable compaction, so expert e's rows come out in slot order. Slots past kept[e] are
// dropped. Every slot is written by its expert's block only. A thread counts a run of
// kPermuteRun consecutive slots, so one pass of the block's prefix count covers
// kPermuteThreads * kPermuteRun slots (16384: a micro-batch of 8192 tokens at top-2 in one pass,
// where a pass per 256 slots made the block's barriers the cost).
constexpr int kPermuteThreads = 1024;
constexpr int kPermuteRun = 16;

// The exclusive prefix sum over the block of `value`, and the block's total.
__device__ __forceinline__ int block_exclusive_scan(int value, int* warp_totals, int& total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  int inclusive = value;
  for (int offset = 1; offset < 32; offset *= 2) {
    const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  int before = 0;
  total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before += warp_totals[w];
    total += warp_totals[w];
  }
  __syncthreads();  // warp_totals is rewritten by the next pass
  return before + inclusive - value;
}

__global__ void __launch_bounds__(kPermuteThreads)
    permute_kernel(const std::int32_t* expert, const float* gate, std::int64_t slots,
                   std::int64_t k, const long long* row_begin, const long long* kept,
                   std::int32_t* token_index, float* row_gate, std::int32_t* slot_row) {
  __shared__ int warp_totals[kPermuteThreads / 32];
  const int e = static_cast<int>(blockIdx.x);
  const long long begin = row_begin[e], limit = kept[e];
  long long seen = 0;  // slots of e before this pass
  for (std::int64_t pass = 0; pass < slots; pass += std::int64_t{kPermuteThreads} * kPermuteRun) {
    const std::int64_t first = pass + std::int64_t{threadIdx.x} * kPermuteRun;
    unsigned mine = 0;  // bit j: slot first + j is routed to e
#pragma unroll
    for (int j = 0; j < kPermuteRun; ++j)
      if (first + j < slots && expert[first + j] == e) mine |= 1u << j;
    int total = 0;
    long long before = seen + block_exclusive_scan(__popc(mine), warp_totals, total);
    for (; mine != 0; mine &= mine - 1) {
      const std::int64_t i = first + __ffs(mine) - 1;
      if (before < limit) {
        const long long row = begin + before;
        token_index[row] = static_cast<std::int32_t>(i / k);
        row_gate[row] = gate[i];
        slot_row[i] = static_cast<std::int32_t>(row);
      } else {
        slot_row[i] = -1;
      }
      ++before;
    }
    seen += total;
  }
}

// y[t, c] += sum over token t's rows in ascending row order of w[r] * rows[r - first, c]: the k
// row ids are visited smallest first by selection (k is small), so the order is fixed. Rows
// outside [first, first + num_rows) (another rank's experts) add nothing; a row id past the
// permutation's total gives NaN (caught by the finite checks) rather than a read out of bounds.
// A thread takes a run of W columns of one token (rows never split a run when W divides h), so
// the row search, the weights and the index division happen once per run instead of once per
// element; with W = 8 the rows are read and y written in 16-byte words. Without `accumulate` the
// sum starts from +0, as from a zero-filled y (the same bits), and y is not read.
template <class R, class Y>
__global__ void combine_kernel(const R* rows, std::int64_t first, std::int64_t num_rows,
                               std::int64_t total_rows, const float* weights,
                               const std::int32_t* slot_row, std::int64_t tokens, std::int64_t k,
                               std::int64_t h, bool vectorised, bool accumulate, Y* y) {
  for_each_run(tokens * h, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    const std::int64_t t = i / h, c = i - t * h;
    const std::int32_t* mine = slot_row + t * k;
    float acc[W] = {};
    if (accumulate) load_run<W>(y + i, acc);
    std::int64_t prev = -1;
    for (std::int64_t step = 0; step < k; ++step) {
      std::int64_t next = -1;
      for (std::int64_t j = 0; j < k; ++j) {
        const std::int64_t r = mine[j];
        if (r > prev && (next < 0 || r < next)) next = r;
      }
      if (next < 0) break;
      prev = next;
      const bool outside = next < first || next >= first + num_rows;
      if (outside && next < total_rows) continue;
      const float w = weights != nullptr ? weights[next] : 1.0f;
      float v[W];
      if (!outside) {
        load_run<W>(rows + (next - first) * h + c, v);
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] = NAN;
      }
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] = __fmaf_rn(w, v[j], acc[j]);
    }
    store_run<W>(y + i, acc);
  });
}

// dst[i, c] = w[i] * src[index[i], c]; an index outside the source gives NaN (caught by the
// finite checks) rather than a read out of bounds. Runs of W columns per thread, as combine_kernel.
template <class S, class D>
__global__ void gather_rows_kernel(const S* src, std::int64_t src_rows, const std::int32_t* index,
                                   const float* weights, std::int64_t m, std::int64_t h,
                                   bool vectorised, D* dst) {
  for_each_run(m * h, vectorised, [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    const std::int64_t r = i / h, c = i - r * h;
    const std::int64_t from = index[r];
    const float w = weights != nullptr ? weights[r] : 1.0f;
    float v[W];
    if (from >= 0 && from < src_rows) {
      load_run<W>(src + from * h + c, v);
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) v[j] = NAN;
    }
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = __fmul_rn(w, v[j]);
    store_run<W>(dst + i, v);
  });
}

// One warp per row, double accumulation as on the CPU, a fixed shuffle tree. Vectorised, a lane
// reads runs of kRun columns (16-byte words of bf16), lane + 32 j for j = 0, 1, ...
template <class A, class B>
__global__ void row_dot_kernel(const A* a, const B* b, std::int64_t m, std::int64_t h,
                               bool vectorised, float* out) {
  const int lane = threadIdx.x % 32;
  const std::int64_t warps_per_grid = std::int64_t{gridDim.x} * (blockDim.x / 32);
  for (std::int64_t r = blockIdx.x * std::int64_t{blockDim.x / 32} + threadIdx.x / 32; r < m;
       r += warps_per_grid) {
    double sum = 0.0;
    if (vectorised) {
      for (std::int64_t c = std::int64_t{lane} * kRun; c < h; c += 32 * kRun) {
        float x[kRun], y[kRun];
        load_run<kRun>(a + r * h + c, x);
        load_run<kRun>(b + r * h + c, y);
#pragma unroll
        for (int j = 0; j < kRun; ++j) sum += static_cast<double>(x[j]) * y[j];
      }
    } else {
      for (std::int64_t c = lane; c < h; c += 32)
        sum += static_cast<double>(to_float(a[r * h + c])) * to_float(b[r * h + c]);
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) out[r] = static_cast<float>(sum);
  }
}

__global__ void sigmoid_forward_kernel(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    y[i] = static_cast<float>(1.0 / (1.0 + exp(-static_cast<double>(x[i]))));
}

__global__ void sigmoid_backward_kernel(const float* dy, const float* y, float* dx,
                                        std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

// Pageable host memory: the copy is staged before cudaMemcpyAsync returns, so `host` may go at
// once, and the device is not synchronised (cudaMemcpy would wait for all queued work first).
template <class T>
void upload(const std::vector<T>& host, Tensor& device) {
  MM_ASSERT(device.bytes() == host.size() * sizeof(T), "upload of ", host.size(), " values into ",
            device.bytes(), " bytes");
  if (!host.empty())
    MM_CUDA_CHECK(cudaMemcpyAsync(device.raw(), host.data(), device.bytes(), cudaMemcpyHostToDevice,
                                  nullptr));
}

template <class T>
std::vector<T> download(const Tensor& device) {
  std::vector<T> host(device.bytes() / sizeof(T));
  if (!host.empty())
    MM_CUDA_CHECK(cudaMemcpy(host.data(), device.raw(), device.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

void require_f32(const Tensor& t, const char* op, const char* what) {
  MM_ASSERT(t.dtype() == DType::f32, op, ": ", what, " must be f32, got ", dtype_name(t.dtype()));
}

void require_i32(const Tensor& t, const char* op, const char* what) {
  MM_ASSERT(t.dtype() == DType::i32, op, ": ", what, " must be i32, got ", dtype_name(t.dtype()));
}

}  // namespace

RouterOutput CudaBackend::router_forward(const Tensor& logits, const Tensor& bias,
                                         const RouterSpec& spec) {
  const std::int64_t n = logits.dim(0), E = spec.num_experts, k = spec.top_k;
  MM_ASSERT(E > 0 && k > 0 && k <= E, "router_forward: ", k, " of ", E, " experts");
  MM_ASSERT(logits.rank() == 2 && logits.dim(1) == E && (!bias.defined() || bias.numel() == E),
            "router_forward: logits ", shape_string(logits.shape()), " for ", E, " experts");
  check_on_device(logits, "router_forward");
  require_f32(logits, "router_forward", "logits");
  if (bias.defined()) {
    check_on_device(bias, "router_forward");
    require_f32(bias, "router_forward", "bias");
  }
  RouterOutput r = empty_router_output(arena(), device(), n, spec);
  r.summary.counts.assign(static_cast<std::size_t>(E), 0);
  if (n == 0) return r;
  Tensor z_term = empty({n}, DType::i64), entropy_term = empty({n}, DType::i64);
  router_forward_kernel<<<grid_for(n, 128), 128>>>(
      cptr<float>(logits), bias.defined() ? cptr<float>(bias) : nullptr, n, E, k, spec.sigmoid,
      spec.renormalise, spec.force_balance, mptr<std::int32_t>(r.expert), mptr<float>(r.gate),
      mptr<float>(r.prob), spec.sigmoid ? mptr<float>(r.score) : nullptr, mptr<float>(r.lse),
      mptr<double>(z_term), mptr<double>(entropy_term));
  MM_CUDA_CHECK_LAUNCH();
  // What the host needs, in one buffer of 8-byte values for one copy back (the block sizes its
  // permutation and the exchange from the counts): prob sums [0, E), slot counts [E, 2E), the
  // z-loss and entropy sums at 2E and 2E + 1.
  Tensor summary = empty({2 * E + 2}, DType::i64);
  double* prob_sum = mptr<double>(summary);
  auto* counts = reinterpret_cast<long long*>(prob_sum + E);
  router_columns_kernel<<<static_cast<unsigned>(E), kThreads>>>(
      cptr<float>(r.prob), cptr<std::int32_t>(r.expert), n, E, k, prob_sum, counts);
  MM_CUDA_CHECK_LAUNCH();
  sum_doubles_on_device(z_term, prob_sum + 2 * E);
  sum_doubles_on_device(entropy_term, prob_sum + 2 * E + 1);
  const std::vector<double> host = download<double>(summary);
  const double* mean_prob = host.data();
  std::vector<long long> slot_counts(static_cast<std::size_t>(E));
  std::memcpy(slot_counts.data(), host.data() + E, slot_counts.size() * sizeof(long long));
  const double z_sum = host[static_cast<std::size_t>(2 * E)],
               entropy_sum = host[static_cast<std::size_t>(2 * E + 1)];
  const double slots = static_cast<double>(n * k);
  double balance = 0.0;
  for (std::size_t e = 0; e < slot_counts.size(); ++e) {
    r.summary.counts[e] = slot_counts[e];
    balance +=
        static_cast<double>(slot_counts[e]) / slots * (mean_prob[e] / static_cast<double>(n));
  }
  r.summary.aux_loss = spec.aux_loss_coef * static_cast<double>(E) * balance;
  r.summary.z_loss = spec.z_loss_coef * z_sum / static_cast<double>(n);
  r.summary.entropy = entropy_sum / static_cast<double>(n);
  return r;
}

void CudaBackend::router_backward(const Tensor& logits, const RouterOutput& r,
                                  const RouterSpec& spec, const Tensor& dgate_rows,
                                  const Tensor& slot_row, float loss_scale, Tensor& dlogits) {
  const std::int64_t n = logits.dim(0), E = spec.num_experts, k = spec.top_k;
  MM_ASSERT(slot_row.numel() == n * k && dlogits.shape() == logits.shape() &&
                r.summary.counts.size() == static_cast<std::size_t>(E),
            "router_backward: slot_row ", shape_string(slot_row.shape()), " dlogits ",
            shape_string(dlogits.shape()), " for logits ", shape_string(logits.shape()));
  check_all_on_device("router_backward", logits, dgate_rows, slot_row, dlogits, r.expert, r.gate,
                      r.prob, r.lse);
  require_f32(dlogits, "router_backward", "dlogits");
  require_f32(dgate_rows, "router_backward", "dgate_rows");
  require_i32(slot_row, "router_backward", "slot_row");
  if (n == 0) return;
  const double tokens = static_cast<double>(n);
  std::vector<double> daux(static_cast<std::size_t>(E));
  for (std::size_t e = 0; e < daux.size(); ++e)
    daux[e] = loss_scale * spec.aux_loss_coef * static_cast<double>(E) *
              (static_cast<double>(r.summary.counts[e]) / (tokens * static_cast<double>(k))) /
              tokens;
  Tensor daux_device = empty({E}, DType::i64);
  upload(daux, daux_device);
  const double dz_coef = loss_scale * spec.z_loss_coef * 2.0 / tokens;
  router_backward_kernel<<<grid_for(n, 128), 128>>>(
      cptr<float>(logits), n, E, k, spec.sigmoid, spec.renormalise, cptr<std::int32_t>(r.expert),
      cptr<float>(r.gate), cptr<float>(r.prob), spec.sigmoid ? cptr<float>(r.score) : nullptr,
      cptr<float>(r.lse), cptr<double>(daux_device), dz_coef, spec.z_loss_coef > 0,
      cptr<float>(dgate_rows), cptr<std::int32_t>(slot_row), mptr<float>(dlogits));
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::moe_permute(const Tensor& expert, const Tensor& gate,
                              const std::vector<std::int64_t>& kept, Tensor& token_index,
                              Tensor& row_gate, Tensor& slot_row) {
  const std::int64_t slots = expert.numel(), k = expert.dim(-1);
  const auto E = static_cast<std::int64_t>(kept.size());
  // Expert e's first row and its kept rows, at [e] and [E + e]: one upload.
  std::vector<long long> bounds(2 * kept.size());
  long long rows = 0;
  for (std::size_t e = 0; e < kept.size(); ++e) {
    MM_ASSERT(kept[e] >= 0, "moe_permute: expert ", e, " keeps ", kept[e], " rows");
    bounds[e] = rows;
    bounds[kept.size() + e] = kept[e];
    rows += kept[e];
  }
  MM_ASSERT(gate.numel() == slots && slot_row.numel() == slots && token_index.numel() == rows &&
                row_gate.numel() == rows && slots < (std::int64_t{1} << 31),
            "moe_permute: ", slots, " slots, ", rows, " kept rows, token_index ",
            shape_string(token_index.shape()), " slot_row ", shape_string(slot_row.shape()));
  check_all_on_device("moe_permute", expert, gate, token_index, row_gate, slot_row);
  require_i32(expert, "moe_permute", "expert");
  require_f32(gate, "moe_permute", "gate");
  require_i32(token_index, "moe_permute", "token_index");
  require_f32(row_gate, "moe_permute", "row_gate");
  require_i32(slot_row, "moe_permute", "slot_row");
  if (slots == 0) return;
  // Slots whose expert id lies outside [0, E) (none from router_forward) stay dropped.
  fill_i32_kernel<<<grid_for(slots), kThreads>>>(mptr<std::int32_t>(slot_row), slots, -1);
  MM_CUDA_CHECK_LAUNCH();
  if (E == 0) return;
  Tensor bounds_device = empty({2 * E}, DType::i64);
  upload(bounds, bounds_device);
  permute_kernel<<<static_cast<unsigned>(E), kPermuteThreads>>>(
      cptr<std::int32_t>(expert), cptr<float>(gate), slots, k, cptr<long long>(bounds_device),
      cptr<long long>(bounds_device) + E, mptr<std::int32_t>(token_index), mptr<float>(row_gate),
      mptr<std::int32_t>(slot_row));
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::moe_combine(const Tensor& rows, const Tensor& token_index, const Tensor& weights,
                              const Tensor& slot_row, Tensor& y, std::int64_t first_row,
                              bool accumulate) {
  const std::int64_t tokens = y.dim(0), h = y.dim(1);
  MM_ASSERT(y.rank() == 2 && rows.rank() == 2 && rows.dim(1) == h && first_row >= 0 &&
                first_row + rows.dim(0) <= token_index.numel() &&
                (!weights.defined() || weights.numel() == token_index.numel()) &&
                (tokens == 0 || slot_row.numel() % tokens == 0),
            "moe_combine: rows ", shape_string(rows.shape()), " from row ", first_row,
            " token_index ", shape_string(token_index.shape()), " slot_row ",
            shape_string(slot_row.shape()), " y ", shape_string(y.shape()));
  check_all_on_device("moe_combine", rows, slot_row, y);
  require_i32(slot_row, "moe_combine", "slot_row");
  if (weights.defined()) {
    check_on_device(weights, "moe_combine");
    require_f32(weights, "moe_combine", "weights");
  }
  if (tokens == 0 || h == 0) return;
  const std::int64_t k = slot_row.numel() / tokens;
  const float* w = weights.defined() ? cptr<float>(weights) : nullptr;
  dispatch_float(rows.dtype(), "moe_combine", [&](auto r) {
    using R = decltype(r);
    dispatch_float(y.dtype(), "moe_combine", [&](auto yv) {
      using Y = decltype(yv);
      const bool vectorised = h % kRun == 0 && aligned16(rows.raw(), y.raw());
      combine_kernel<R, Y><<<grid_for_runs(tokens * h, vectorised), kThreads>>>(
          cptr<R>(rows), first_row, rows.dim(0), token_index.numel(), w,
          cptr<std::int32_t>(slot_row), tokens, k, h, vectorised, accumulate, mptr<Y>(y));
      MM_CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::gather_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                              Tensor& dst) {
  MM_ASSERT(dst.rank() == 2 && src.rank() == 2 && dst.dim(1) == src.dim(1) &&
                index.numel() == dst.dim(0) &&
                (!weights.defined() || weights.numel() == dst.dim(0)),
            "gather_rows: dst ", shape_string(dst.shape()), " index ", shape_string(index.shape()),
            " src ", shape_string(src.shape()));
  check_all_on_device("gather_rows", src, index, dst);
  require_i32(index, "gather_rows", "index");
  if (weights.defined()) {
    check_on_device(weights, "gather_rows");
    require_f32(weights, "gather_rows", "weights");
  }
  const std::int64_t m = dst.dim(0), h = dst.dim(1);
  if (m == 0 || h == 0) return;
  const float* w = weights.defined() ? cptr<float>(weights) : nullptr;
  dispatch_float(src.dtype(), "gather_rows", [&](auto s) {
    using S = decltype(s);
    dispatch_float(dst.dtype(), "gather_rows", [&](auto d) {
      using D = decltype(d);
      const bool vectorised = h % kRun == 0 && aligned16(src.raw(), dst.raw());
      gather_rows_kernel<S, D><<<grid_for_runs(m * h, vectorised), kThreads>>>(
          cptr<S>(src), src.dim(0), cptr<std::int32_t>(index), w, m, h, vectorised, mptr<D>(dst));
      MM_CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::row_dot(const Tensor& a, const Tensor& b, Tensor& out) {
  MM_ASSERT(a.rank() == 2 && a.shape() == b.shape() && out.numel() == a.dim(0), "row_dot a ",
            shape_string(a.shape()), " b ", shape_string(b.shape()), " out ",
            shape_string(out.shape()));
  check_all_on_device("row_dot", a, b, out);
  require_f32(out, "row_dot", "out");
  const std::int64_t m = a.dim(0), h = a.dim(1);
  if (m == 0) return;
  dispatch_float(a.dtype(), "row_dot", [&](auto av) {
    using A = decltype(av);
    dispatch_float(b.dtype(), "row_dot", [&](auto bv) {
      using B = decltype(bv);
      const bool vectorised = h % kRun == 0 && aligned16(a.raw(), b.raw());
      row_dot_kernel<A, B><<<grid_for(m * 32), kThreads>>>(cptr<A>(a), cptr<B>(b), m, h, vectorised,
                                                           mptr<float>(out));
      MM_CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::sigmoid_forward(const Tensor& x, Tensor& y) {
  MM_ASSERT(x.numel() == y.numel(), "sigmoid_forward: x ", shape_string(x.shape()), " y ",
            shape_string(y.shape()));
  check_all_on_device("sigmoid_forward", x, y);
  require_f32(x, "sigmoid_forward", "x");
  require_f32(y, "sigmoid_forward", "y");
  if (x.numel() == 0) return;
  sigmoid_forward_kernel<<<grid_for(x.numel()), kThreads>>>(cptr<float>(x), mptr<float>(y),
                                                            x.numel());
  MM_CUDA_CHECK_LAUNCH();
}

void CudaBackend::sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  MM_ASSERT(dy.numel() == y.numel() && dx.numel() == y.numel(), "sigmoid_backward: dy ",
            shape_string(dy.shape()), " y ", shape_string(y.shape()), " dx ",
            shape_string(dx.shape()));
  check_all_on_device("sigmoid_backward", dy, y, dx);
  require_f32(dy, "sigmoid_backward", "dy");
  require_f32(y, "sigmoid_backward", "y");
  require_f32(dx, "sigmoid_backward", "dx");
  if (y.numel() == 0) return;
  sigmoid_backward_kernel<<<grid_for(y.numel()), kThreads>>>(cptr<float>(dy), cptr<float>(y),
                                                             mptr<float>(dx), y.numel());
  MM_CUDA_CHECK_LAUNCH();
}

}  // namespace metamorph::cuda

// GEMM of the CUDA backend through cuBLASLt. Row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T, so no operand is ever transposed in memory. Descriptors and
// the heuristic's algorithm are cached per (shape, transposes, dtypes, alignment): the same GEMMs
// repeat every layer and every step. The plan is chosen for the key alone, whatever stream and
// workspace a GEMM runs on (cuda_matmul_cache.hpp).
#include <cstdint>

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_expert_streams.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"
#include "runtime/backends/cuda/cuda_matmul_cache.hpp"

namespace metamorph::cuda {

namespace {
cudaDataType_t cuda_type(DType dtype) {
  if (dtype == DType::f32) return CUDA_R_32F;
  if (dtype == DType::bf16) return CUDA_R_16BF;
  MM_ASSERT(false, "matmul of a ", dtype_name(dtype), " tensor");
  return CUDA_R_32F;
}

// Largest of 16, 8, 4, 2 bytes dividing the address.
int alignment_of(const void* ptr) {
  const auto bits = reinterpret_cast<std::uintptr_t>(ptr);
  for (int a : {16, 8, 4})
    if (bits % a == 0) return a;
  return 2;
}
}  // namespace

MatmulCache::MatmulCache(Arena& arena) {
  MM_CUBLAS_CHECK(cublasLtCreate(&handle_));
  workspace_ = arena.allocate(kWorkspaceBytes);
  workspace_arena_ = &arena;
}

MatmulCache::~MatmulCache() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatmulDescDestroy(plan.desc);
    cublasLtMatrixLayoutDestroy(plan.a);
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.c);
  }
  workspace_arena_->release(workspace_, kWorkspaceBytes);
  cublasLtDestroy(handle_);
}

void MatmulCache::run(const Key& key, const void* a, const void* b, void* c, float alpha,
                      float beta, const GemmLane& lane) {
  MM_ASSERT(lane.workspace != nullptr, "a GEMM lane without a workspace");
  const Plan& plan = plan_for(key);
  MM_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, a, plan.a, b, plan.b, &beta, c, plan.c,
                                 c, plan.c, &plan.algo, lane.workspace, kWorkspaceBytes,
                                 lane.stream));
}

const MatmulCache::Plan& MatmulCache::plan_for(const Key& key) {
  std::lock_guard lock(mutex_);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  Plan plan;
  MM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  MM_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  MM_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  const cudaDataType_t in = cuda_type(key.in), out = cuda_type(key.out);
  // Stored (pre-op) shapes of the column-major operands.
  const std::int64_t rows_a = key.trans_a ? key.k : key.m, cols_a = key.trans_a ? key.m : key.k;
  const std::int64_t rows_b = key.trans_b ? key.n : key.k, cols_b = key.trans_b ? key.k : key.n;
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, in, rows_a, cols_a, key.lda));
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, in, rows_b, cols_b, key.ldb));
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, out, key.m, key.n, key.ldc));

  cublasLtMatmulPreference_t pref = nullptr;
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const std::uint64_t workspace = kWorkspaceBytes;
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace));
  const std::uint32_t align_a = key.align_a, align_b = key.align_b, align_c = key.align_c;
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  MM_ASSERT(status == CUBLAS_STATUS_SUCCESS && found > 0,
            "cuBLASLt has no algorithm for the GEMM m=", key.m, " n=", key.n, " k=", key.k, " in ",
            dtype_name(key.in), " out ", dtype_name(key.out));
  plan.algo = result.algo;
  return plans_.emplace(key, plan).first->second;
}

CudaBackend::CudaBackend(Arena& arena, bool deterministic, int expert_streams)
    : arena_(arena),
      deterministic_(deterministic),
      matmuls_(std::make_unique<MatmulCache>(arena)),
      cudnn_attention_(arena, deterministic) {
  set_expert_streams(expert_streams);
}

CudaBackend::~CudaBackend() = default;

void CudaBackend::matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                         float alpha, float beta) {
  matmul_on(matmuls_->compute_lane(), a, trans_a, b, trans_b, c, alpha, beta);
}

void CudaBackend::matmul_on(const GemmLane& lane, const Tensor& a, bool trans_a, const Tensor& b,
                            bool trans_b, Tensor& c, float alpha, float beta) {
  check_all_on_device("matmul", a, b, c);
  MM_ASSERT(a.rank() == 2 && b.rank() == 2 && c.rank() == 2,
            "matmul wants 2-D operands: ", shape_string(a.shape()), " ", shape_string(b.shape()),
            " ", shape_string(c.shape()));
  const std::int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const std::int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const std::int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const std::int64_t n = trans_b ? b.dim(0) : b.dim(1);
  MM_ASSERT(k == kb && c.dim(0) == m && c.dim(1) == n, "matmul shapes ", shape_string(a.shape()),
            trans_a ? "^T" : "", " @ ", shape_string(b.shape()), trans_b ? "^T" : "", " -> ",
            shape_string(c.shape()));
  MM_ASSERT(a.dtype() == b.dtype(), "matmul operands ", dtype_name(a.dtype()), " and ",
            dtype_name(b.dtype()), " must share a dtype");
  // cuBLASLt's f32 GEMM writes f32 only; bf16 operands may write either.
  MM_ASSERT(a.dtype() == DType::bf16 || c.dtype() == DType::f32, "matmul of ",
            dtype_name(a.dtype()), " operands into a ", dtype_name(c.dtype()), " result");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // An empty inner product is zero; cuBLASLt would reject the leading dimension 0 instead.
    // fill and scale run on the compute stream: the grouped GEMMs never send one to a side lane.
    MM_ASSERT(lane.stream == nullptr, "an empty inner product on a side stream");
    if (beta == 0.0f)
      fill(c, 0.0f);
    else
      scale(c, beta);
    return;
  }
  // Row-major C[m, n] = op(a) op(b) is column-major C^T[n, m] = op(b)^T-as-stored op(a)...
  MatmulCache::Key key{};
  key.m = n;
  key.n = m;
  key.k = k;
  key.lda = b.dim(1);
  key.ldb = a.dim(1);
  key.ldc = c.dim(1);
  key.trans_a = trans_b;
  key.trans_b = trans_a;
  key.in = a.dtype();
  key.out = c.dtype();
  key.align_a = alignment_of(b.raw());
  key.align_b = alignment_of(a.raw());
  key.align_c = alignment_of(c.raw());
  matmuls_->run(key, b.raw(), a.raw(), c.raw(), alpha, beta, lane);
}

}  // namespace metamorph::cuda

#pragma once
// The cuBLASLt GEMMs of the CUDA backend: one handle, the descriptors and the heuristic's algorithm
// cached per (shape, transposes, dtypes, alignment), and the backend's own 32 MiB workspace. A GEMM
// runs on whichever stream and workspace the caller names, so the grouped expert GEMMs can run on
// side streams (cuda_expert_streams.hpp) with exactly the plan, and so the algorithm and the bits,
// that the same GEMM gets on the compute stream.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "runtime/core/arena.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph::cuda {

// Where a GEMM runs: its stream, and a workspace of MatmulCache::kWorkspaceBytes that no GEMM
// running at the same time uses.
struct GemmLane {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
};

class MatmulCache {
 public:
  // Hopper's cuBLASLt kernels want up to 32 MiB of workspace for their split-K and stream-K
  // variants.
  static constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

  // Takes the compute stream's workspace from `arena` (so it is in the arena's peak).
  explicit MatmulCache(Arena& arena);
  ~MatmulCache();
  MatmulCache(const MatmulCache&) = delete;
  MatmulCache& operator=(const MatmulCache&) = delete;

  // Column-major problem: D[m, n] = alpha * op(A) op(B) + beta * C, A stored [rows_a, cols_a].
  struct Key {
    std::int64_t m, n, k, lda, ldb, ldc;
    bool trans_a, trans_b;
    DType in, out;
    int align_a, align_b, align_c;
    bool operator<(const Key& o) const {
      return std::tie(m, n, k, lda, ldb, ldc, trans_a, trans_b, in, out, align_a, align_b,
                      align_c) < std::tie(o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.trans_a, o.trans_b,
                                          o.in, o.out, o.align_a, o.align_b, o.align_c);
    }
  };

  // Queues the GEMM of `key` on lane.stream with lane.workspace. The plan is the same whatever the
  // lane: it depends on the key alone.
  void run(const Key& key, const void* a, const void* b, void* c, float alpha, float beta,
           const GemmLane& lane);

  // The compute stream (the legacy default stream) with this cache's own workspace.
  GemmLane compute_lane() const { return GemmLane{nullptr, workspace_}; }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan_for(const Key& key);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  Arena* workspace_arena_ = nullptr;
  std::mutex mutex_;
  std::map<Key, Plan> plans_;  // node-based: a Plan's address stays valid as others are added
};

}  // namespace metamorph::cuda

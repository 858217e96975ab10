// Token id checks of the CUDA backend (cuda_id_check.hpp).
#include "runtime/backends/cuda/cuda_id_check.hpp"

#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_kernels_common.cuh"

namespace metamorph::cuda {

namespace {

__global__ void find_bad_id_kernel(const std::int32_t* ids, std::int64_t count, std::int64_t limit,
                                   bool has_exempt, std::int32_t exempt, long long* first_bad) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int32_t id = ids[i];
    if ((id < 0 || id >= limit) && !(has_exempt && id == exempt))
      atomicMin(first_bad, static_cast<long long>(i));
  }
}

}  // namespace

void launch_id_check(const Tensor& ids, std::int64_t limit, std::optional<std::int32_t> exempt,
                     long long* first_bad) {
  MM_ASSERT(ids.dtype() == DType::i32, "token ids must be i32, not ", dtype_name(ids.dtype()));
  MM_CUDA_CHECK(cudaMemsetAsync(first_bad, 0x7f, sizeof(long long)));
  const std::int64_t count = ids.numel();
  if (count == 0) return;
  find_bad_id_kernel<<<grid_for(count), kThreads>>>(
      cptr<std::int32_t>(ids), count, limit, exempt.has_value(), exempt.value_or(0), first_bad);
  MM_CUDA_CHECK_LAUNCH();
}

long long wait_for_id_check(CudaBackend& backend, const Tensor& ids, std::int64_t limit,
                            std::optional<std::int32_t> exempt,
                            const std::function<void()>& alongside) {
  Tensor first_bad = backend.empty({1}, DType::i64);
  auto* position = static_cast<long long*>(first_bad.raw());
  launch_id_check(ids, limit, exempt, position);
  if (alongside) alongside();
  long long host = 0;
  MM_CUDA_CHECK(cudaMemcpy(&host, position, sizeof host, cudaMemcpyDeviceToHost));
  return host;
}

std::optional<std::int32_t> bad_id_at(const Tensor& ids, long long first_bad) {
  if (first_bad == kNoBadId) return std::nullopt;
  std::int32_t id = 0;
  MM_CUDA_CHECK(
      cudaMemcpy(&id, cptr<std::int32_t>(ids) + first_bad, sizeof id, cudaMemcpyDeviceToHost));
  return id;
}

}  // namespace metamorph::cuda

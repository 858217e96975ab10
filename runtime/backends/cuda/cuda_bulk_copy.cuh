#pragma once
// Hopper's bulk copies from global to shared memory (cp.async.bulk, done by the copy engine of the
// SM, not by threads) and the transaction barriers (mbarrier) that say when a copy has landed.
// One thread issues a copy of a whole row; the block waits on the stage's barrier, so a kernel can
// keep several rows in flight without holding them in registers (sm_90 only).
#include <cstdint>

namespace metamorph::cuda::bulk_copy {

__device__ __forceinline__ std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// A barrier that completes a phase when `arrivals` threads have arrived and every byte they
// announced has landed.
__device__ __forceinline__ void barrier_init(std::uint64_t* barrier, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(barrier)),
               "r"(arrivals)
               : "memory");
}

// Makes the initialised barriers visible to the copy engine before the first copy names them.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// This thread's arrival, announcing `bytes` still to land in the current phase.
__device__ __forceinline__ void arrive_expecting(std::uint64_t* barrier, std::uint32_t bytes) {
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(barrier)),
      "r"(bytes)
      : "memory");
}

// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from global memory to shared
// memory, counted against `barrier`'s announced bytes as they land.
__device__ __forceinline__ void copy_to_shared(void* dst, const void* src, std::uint32_t bytes,
                                               std::uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(shared_address(dst)),
      "l"(src), "r"(bytes), "r"(shared_address(barrier))
      : "memory");
}

// Waits until the barrier's phase of parity `parity` (0, 1, 0, ... for its phases in turn) has
// completed.
__device__ __forceinline__ void wait(std::uint64_t* barrier, std::uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_loop:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_loop;\n"
      "}\n" ::"r"(shared_address(barrier)),
      "r"(parity)
      : "memory");
}

}  // namespace metamorph::cuda::bulk_copy

#pragma once
// The op-correctness harness of the CUDA backend, in the manner of ggml's test-backend-ops: each
// test draws random inputs, runs one op on the CPU reference backend and on the GPU, and judges
// the GPU result by its normalised error ||gpu - cpu|| / ||cpu|| against a per-dtype bound.
// bf16 cases give both backends the same bf16-representable inputs, so the bound measures the
// GPU's arithmetic and output rounding, not the input rounding. Without a visible GPU every test
// skips (CI builds these tests but has no GPU).
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/backends/cuda/cuda_arena.hpp"
#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph::gpu_test {

// Normalised-error bounds: f32 kernels differ from the reference only in summation order; bf16
// outputs carry a rounding of 2^-9 relative per element.
double tolerance(DType dtype);

class GpuOpTest : public ::testing::Test {
 protected:
  void SetUp() override;

  // Host f32 tensor, uniform in [lo, hi), already representable in `dtype` (rounded through bf16
  // when dtype is bf16) so that CPU and GPU see identical inputs.
  Tensor random(const Shape& shape, DType dtype = DType::f32, float lo = -1.0f, float hi = 1.0f);
  Tensor random_ids(std::int64_t count, std::int32_t lo, std::int32_t hi);
  // Host tensor -> device tensor of `dtype`, and back to host f32 (i32 stays i32).
  Tensor up(const Tensor& host, DType dtype);
  Tensor up(const Tensor& host) { return up(host, host.dtype()); }
  Tensor down(const Tensor& device);
  // A device tensor of `dtype` filled with NaN, so unwritten outputs fail the comparison.
  Tensor poisoned(const Shape& shape, DType dtype);

  Arena host_arena_;
  std::unique_ptr<cuda::CudaArena> device_arena_;
  std::unique_ptr<CpuBackend> cpu_;
  std::unique_ptr<cuda::CudaBackend> gpu_;
  std::mt19937 rng_{12345};
};

// ||actual - expected|| / ||expected|| over all elements (||actual - expected|| when expected is
// zero); NaN when either holds a NaN, and +inf where exactly one is infinite, so both fail.
double normalised_error(const Tensor& actual, const Tensor& expected);

// EXPECT that the GPU result (a device tensor) matches the CPU result within the dtype's bound.
#define EXPECT_CLOSE(device_result, host_expected, dtype, what)                                   \
  do {                                                                                            \
    const double mm_err_ =                                                                        \
        ::metamorph::gpu_test::normalised_error(down(device_result), host_expected);              \
    EXPECT_LT(mm_err_, ::metamorph::gpu_test::tolerance(dtype))                                   \
        << (what) << " (" << ::metamorph::dtype_name(dtype) << "): normalised error " << mm_err_; \
  } while (0)

std::string describe(const Shape& shape);

}  // namespace metamorph::gpu_test

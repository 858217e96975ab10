#include "tests/gpu/gpu_harness.hpp"

#include <cmath>
#include <limits>

#include "runtime/backends/cuda/cuda_device.hpp"
#include "runtime/backends/cuda/cuda_transfer.hpp"

namespace metamorph::gpu_test {

double tolerance(DType dtype) {
  return dtype == DType::bf16 ? 1e-2 : 1e-4;
}

void GpuOpTest::SetUp() {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  device_arena_ = std::make_unique<cuda::CudaArena>();
  cpu_ = std::make_unique<CpuBackend>(host_arena_);
  gpu_ = std::make_unique<cuda::CudaBackend>(*device_arena_);
}

Tensor GpuOpTest::random(const Shape& shape, DType dtype, float lo, float hi) {
  Tensor t = Tensor::empty(shape, DType::f32, host_arena_);
  std::uniform_real_distribution<float> dist(lo, hi);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const float v = dist(rng_);
    p[i] = dtype == DType::bf16 ? cuda::bf16_to_float(cuda::float_to_bf16(v)) : v;
  }
  return t;
}

Tensor GpuOpTest::random_ids(std::int64_t count, std::int32_t lo, std::int32_t hi) {
  Tensor t = Tensor::empty({count}, DType::i32, host_arena_);
  std::uniform_int_distribution<std::int32_t> dist(lo, hi - 1);
  for (std::int64_t i = 0; i < count; ++i) t.data<std::int32_t>()[i] = dist(rng_);
  return t;
}

Tensor GpuOpTest::up(const Tensor& host, DType dtype) {
  return cuda::to_device(host, *device_arena_, dtype);
}

Tensor GpuOpTest::down(const Tensor& device) {
  const DType dtype = device.dtype() == DType::bf16 ? DType::f32 : device.dtype();
  return cuda::to_host(device, host_arena_, dtype);
}

Tensor GpuOpTest::poisoned(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, *device_arena_, Device::cuda);
  gpu_->fill(t, std::numeric_limits<float>::quiet_NaN());
  return t;
}

double normalised_error(const Tensor& actual, const Tensor& expected) {
  EXPECT_EQ(actual.numel(), expected.numel());
  if (actual.numel() != expected.numel()) return std::numeric_limits<double>::infinity();
  auto value = [](const Tensor& t, std::int64_t i) -> double {
    return t.dtype() == DType::i32 ? t.data<std::int32_t>()[i] : t.data<float>()[i];
  };
  double diff = 0.0, norm = 0.0;
  for (std::int64_t i = 0; i < actual.numel(); ++i) {
    const double a = value(actual, i), e = value(expected, i);
    if (std::isnan(a) || std::isnan(e)) return std::numeric_limits<double>::quiet_NaN();
    if (std::isinf(a) || std::isinf(e)) {
      if (a != e) return std::numeric_limits<double>::infinity();
      continue;  // the same infinity (e.g. the lse of a row with no allowed key)
    }
    diff += (a - e) * (a - e);
    norm += e * e;
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

std::string describe(const Shape& shape) {
  return shape_string(shape);
}

}  // namespace metamorph::gpu_test

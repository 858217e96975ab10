// `train --device`: the names, and the refusals that hold on any machine (a GPU run of more than
// one rank; a GPU where there is none).
#include <gtest/gtest.h>

#include "runtime/core/error.hpp"
#include "runtime/train/compute_device.hpp"
#include "runtime/train/training_run.hpp"

#ifdef METAMORPH_HAVE_CUDA
#include "runtime/backends/cuda/cuda_device.hpp"
#endif

namespace metamorph {
namespace {

bool gpu_visible() {
#ifdef METAMORPH_HAVE_CUDA
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

TEST(ComputeDevice, ParsesTheTwoNames) {
  EXPECT_EQ(parse_device("cpu"), Device::cpu);
  EXPECT_EQ(parse_device("cuda"), Device::cuda);
  EXPECT_THROW(parse_device("gpu"), InputError);
}

TEST(ComputeDevice, CpuKeepsF32Activations) {
  ComputeDevice d = make_compute_device(Device::cpu);
  EXPECT_EQ(d.backend->activation_dtype(), DType::f32);
  // The host transfers are the identity on the CPU: same storage, no copy.
  Tensor x = d.backend->empty({3});
  EXPECT_TRUE(d.backend->to_host(x, DType::f32).same_storage(x));
  EXPECT_TRUE(d.backend->from_host(x, DType::f32).same_storage(x));
  EXPECT_THROW(d.backend->to_host(x, DType::bf16), InputError);
}

TEST(ComputeDevice, CudaWithoutAGpuIsAnInputError) {
  if (gpu_visible()) GTEST_SKIP() << "a GPU is visible";
  try {
    make_compute_device(Device::cuda);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--device cuda"), std::string::npos) << e.what();
  }
}

TEST(ComputeDevice, CudaRunsRefuseMultiRankLayouts) {
  RunOptions o;
  o.model_path = "unused.json";
  o.data_prefix = "unused";
  o.steps = 1;
  o.seq = 8;
  o.device = Device::cuda;
  o.dp = 2;
  try {
    run_training(o, Logger(LogOptions{.rank = 1}));
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("one GPU"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace metamorph

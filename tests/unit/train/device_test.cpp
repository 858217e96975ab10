// `train --device`: the names, and the refusals that hold on any machine (a GPU run of more than
// one rank; a GPU where there is none).
#include <gtest/gtest.h>

#include <cstring>

#include "models/init.hpp"
#include "models/parameter_transfer.hpp"
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

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  return c;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

// The backend-aware initialisation draws exactly what the host one does (the GPU uploads these
// same f32 values into its masters).
TEST(ComputeDevice, BackendInitIsTheHostInitOnTheCpu) {
  ComputeDevice d = make_compute_device(Device::cpu);
  const ModelConfig config = tiny_config();
  ParameterSet a = make_parameters(*d.backend, config), b = make_parameters(*d.backend, config);
  init_parameters(a, config, 7);
  init_parameters(*d.backend, b, config, 7);
  for (const auto& p : a.all()) {
    EXPECT_FALSE(p.master.defined()) << p.name;  // f32 weights are their own master
    EXPECT_TRUE(same_bits(p.value, b.find(p.name)->value)) << p.name;
  }
}

// host_parameters / upload_parameters carry values and moments by name.
TEST(ComputeDevice, ParameterSetsMoveThroughHostCopies) {
  ComputeDevice d = make_compute_device(Device::cpu);
  Backend& cpu = *d.backend;
  const ModelConfig config = tiny_config();
  ParameterSet from = make_parameters(cpu, config), to = make_parameters(cpu, config);
  init_parameters(from, config, 1);
  init_parameters(to, config, 2);
  for (auto* set : {&from, &to})
    for (auto& p : set->all()) {
      p.adam_m = cpu.zeros(p.value.shape());
      p.adam_v = cpu.zeros(p.value.shape());
    }
  for (auto& p : from.all()) {
    cpu.fill(p.adam_m, 0.25f);
    cpu.fill(p.adam_v, 0.5f);
  }
  const ParameterSet host = host_parameters(cpu, from, true);
  for (const auto& p : from.all())
    EXPECT_TRUE(host.find(p.name)->value.same_storage(p.value)) << "the CPU copy is a view";
  upload_parameters(cpu, host, to, true);
  for (const auto& p : from.all()) {
    const Parameter& q = *to.find(p.name);
    EXPECT_TRUE(same_bits(p.value, q.value)) << p.name;
    EXPECT_TRUE(same_bits(p.adam_m, q.adam_m)) << p.name;
    EXPECT_TRUE(same_bits(p.adam_v, q.adam_v)) << p.name;
  }
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

}  // namespace
}  // namespace metamorph

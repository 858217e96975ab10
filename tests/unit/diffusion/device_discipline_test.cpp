// Block diffusion's host/device discipline, checked without a GPU: the objective's passes, a
// training step's forward and backward, the validation loss, the trainer's steps with AdamW and
// both decoders run on a backend
// whose tensors are tagged as device memory and whose ops reject host tensors
// (tests/support/device_checking_backend.hpp). Everything the host fills (noisy tokens, targets,
// 1/t weights, positions, decoder ids) must be uploaded, everything it reads downloaded; the
// results must equal the CPU backend's bits (the same arithmetic, so any difference is a
// transfer that went wrong).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>

#include "models/init.hpp"
#include "runtime/decode/ar_decoder.hpp"
#include "runtime/decode/diffusion_decoder.hpp"
#include "runtime/diffusion/diffusion_objective.hpp"
#include "runtime/diffusion/diffusion_training.hpp"
#include "runtime/train/random_rows.hpp"
#include "runtime/train/trainer.hpp"
#include "tests/support/device_checking_backend.hpp"
#include "tests/unit/diffusion/diffusion_test_model.hpp"

namespace metamorph::diffusion {
namespace {

// The test model on one backend, initialised from the same seed on the host.
struct Model {
  explicit Model(Backend& b) : backend(b) {
    params = make_parameters(backend, config);
    init_parameters(backend, params, config, 31);
    transformer = std::make_unique<Transformer>(backend, config, params);
  }
  Backend& backend;
  ModelConfig config = test::diffusion_test_config();
  ParameterSet params;
  std::unique_ptr<Transformer> transformer;
};

DiffusionOptions options() {
  DiffusionOptions o;
  o.block_size = 4;
  o.mask_token = 22;
  o.masking.schedule = MaskSchedule::position_dependent;
  o.ar_weight = 0.5;  // the second, causal pass
  o.seed = 5;
  return o;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

TEST(DeviceDiscipline, DiffusionPassesTrainingAndValidationUploadEverything) {
  test::DeviceCheckingBackend device;
  Arena arena;
  CpuBackend cpu(arena);
  Model on_device(device), on_cpu(cpu);
  DiffusionObjective device_objective(device, *on_device.transformer, options());
  DiffusionObjective cpu_objective(cpu, *on_cpu.transformer, options());
  const std::int64_t rows = 3, n = 10;  // blocks of 4: the last one partial
  const auto clean = test::random_tokens(rows * n, 22, 9);
  const SampleRange samples{2, 3, 8};

  const std::vector<ModelPass> passes = device_objective.passes(clean.data(), rows, n, samples);
  ASSERT_EQ(passes.size(), 2u);
  for (const ModelPass& p : passes)
    for (const Tensor* t : {&p.tokens, &p.positions, &p.targets, &p.weights})
      EXPECT_EQ(t->device(), Device::cuda) << "a pass tensor left on the host";
  // Nothing of the passes stays behind in host memory: each host copy was uploaded and released.
  EXPECT_EQ(device.host_bytes_in_use(), 0u);
  // The same passes as the CPU builds (downloaded, bit for bit).
  const std::vector<ModelPass> cpu_passes = cpu_objective.passes(clean.data(), rows, n, samples);
  for (std::size_t i = 0; i < passes.size(); ++i) {
    EXPECT_TRUE(same_bits(device.to_host(passes[i].tokens, DType::i32), cpu_passes[i].tokens));
    EXPECT_TRUE(same_bits(device.to_host(passes[i].targets, DType::i32), cpu_passes[i].targets));
    EXPECT_TRUE(same_bits(device.to_host(passes[i].weights, DType::f32), cpu_passes[i].weights));
    EXPECT_TRUE(
        same_bits(device.to_host(passes[i].positions, DType::i32), cpu_passes[i].positions));
  }

  // A training micro-batch: loss and every gradient equal the CPU run's.
  const float scale = 1.0f / static_cast<float>(rows * n);
  LossSum got;
  ASSERT_NO_THROW(got = device_objective.forward_backward(clean.data(), rows, n, samples, scale));
  const LossSum want = cpu_objective.forward_backward(clean.data(), rows, n, samples, scale);
  EXPECT_EQ(got.sum, want.sum);
  EXPECT_EQ(got.tokens, want.tokens);
  for (const auto& p : on_cpu.params.all()) {
    const Parameter* q = on_device.params.find(p.name);
    ASSERT_NE(q, nullptr);
    EXPECT_TRUE(same_bits(device.to_host(q->grad, DType::f32), p.grad)) << p.name;
  }
  // Validation (forward only).
  LossSum val;
  ASSERT_NO_THROW(val = device_objective.loss(clean.data(), rows, n, samples));
  EXPECT_EQ(val.sum, cpu_objective.loss(clean.data(), rows, n, samples).sum);
  EXPECT_EQ(device.host_bytes_in_use(), 0u);
}

// The trainer's path (what `train --objective diffusion --device cuda` runs on one rank): the
// objective's passes through the 1F1B schedule, AdamW on the device, validation every 2 steps.
TEST(DeviceDiscipline, TrainerStepsAndValidationMatchTheCpu) {
  auto run = [](Backend& backend) {
    Model m(backend);
    AdamW optimizer(backend, m.params, AdamWOptions{});
    TrainOptions t;
    t.steps = 4;
    t.micro_batch = 2;
    t.global_batch = 4;
    t.lr = LrSchedule{1e-2, 1e-3, 1, 4};
    t.eval_every = 2;
    t.eval_batches = 2;
    RandomRows train(10, 22, 3), validation(10, 22, 4);
    Trainer trainer(backend, *m.transformer, optimizer, t, train, &validation);
    DiffusionTrainingObjective objective(backend, *m.transformer, options());
    trainer.set_objective(&objective);
    std::vector<StepMetrics> steps;
    for (int i = 0; i < 4; ++i) steps.push_back(trainer.step());
    return steps;
  };
  test::DeviceCheckingBackend device;
  Arena arena;
  CpuBackend cpu(arena);
  std::vector<StepMetrics> got;
  ASSERT_NO_THROW(got = run(device));
  const std::vector<StepMetrics> want = run(cpu);
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].loss, want[i].loss) << "step " << i + 1;
    EXPECT_EQ(got[i].grad_norm, want[i].grad_norm) << "step " << i + 1;
    EXPECT_EQ(got[i].val_loss, want[i].val_loss) << "step " << i + 1;
  }
  EXPECT_TRUE(got[1].val_loss.has_value());
  EXPECT_EQ(device.host_bytes_in_use(), 0u);
}

TEST(DeviceDiscipline, DecodersUploadIdsAndDownloadLogits) {
  test::DeviceCheckingBackend device;
  Arena arena;
  CpuBackend cpu(arena);
  Model on_device(device), on_cpu(cpu);
  const auto prompt = test::random_tokens(6, 22, 4);
  for (const bool cache : {true, false}) {
    SCOPED_TRACE(cache ? "KV cache" : "recomputed");
    decode::DiffusionDecodeOptions d;
    d.block_size = 4;
    d.mask_token = 22;
    d.threshold = 0.3;
    d.use_cache = cache;
    decode::Generation got;
    ASSERT_NO_THROW(got = decode::generate_diffusion(*on_device.transformer, prompt, 11, d));
    const decode::Generation want = decode::generate_diffusion(*on_cpu.transformer, prompt, 11, d);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.forward_passes, want.forward_passes);

    decode::ArDecodeOptions a;
    a.excluded_token = 22;
    a.use_cache = cache;
    ASSERT_NO_THROW(got = decode::generate_ar(*on_device.transformer, prompt, 7, a));
    EXPECT_EQ(got.tokens, decode::generate_ar(*on_cpu.transformer, prompt, 7, a).tokens);
  }
}

}  // namespace
}  // namespace metamorph::diffusion

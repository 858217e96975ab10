#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/rng/philox.hpp"
#include "runtime/train/lr_schedule.hpp"
#include "runtime/train/optimizer.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

TEST(LrSchedule, WarmupThenCosineToMinimum) {
  const LrSchedule s{1.0, 0.1, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(1), 0.1);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(60), 0.55, 1e-12);  // half way through the decay
  EXPECT_DOUBLE_EQ(s.at(110), 0.1);
  EXPECT_DOUBLE_EQ(s.at(500), 0.1);
}

// Five steps with clipping active on some steps, decay and no-decay parameters, a changing LR.
TEST(AdamW, FiveStepsMatchTorchOptimAdamW) {
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet params;
  const std::vector<Shape> shapes = {{3, 4}, {4}, {2, 5}};
  const std::vector<bool> decay = {true, false, true};
  const rng::Stream stream(5, "adamw.test");
  std::uint64_t counter = 0;
  test::TempDir dir;
  std::ofstream init(dir / "init.bin", std::ios::binary);
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    Parameter p;
    p.name = std::string("p").append(std::to_string(i));
    p.global_shape = shapes[i];
    p.offset = Shape(shapes[i].size(), 0);
    p.value = cpu.empty(shapes[i]);
    p.grad = cpu.zeros(shapes[i]);
    p.weight_decay = decay[i];
    for (std::int64_t j = 0; j < p.value.numel(); ++j)
      p.value.data<float>()[j] = stream.normal(counter++);
    init.write(static_cast<const char*>(p.value.raw()),
               static_cast<std::streamsize>(p.value.bytes()));
    params.add(std::move(p));
  }
  init.close();
  AdamWOptions options;
  options.beta1 = 0.8;
  options.beta2 = 0.9;
  options.eps = 1e-6;
  options.weight_decay = 0.3;
  options.clip_norm = 2.5;
  AdamW adamw(cpu, params, options);
  const std::vector<double> lrs = {0.01, 0.02, 0.03, 0.02, 0.01};
  std::ofstream grads(dir / "grads.bin", std::ios::binary);
  for (std::size_t step = 0; step < lrs.size(); ++step) {
    adamw.zero_grad();
    const float magnitude = step % 2 == 0 ? 2.0f : 0.1f;  // alternately clipped and not
    for (auto& p : params.all()) {
      for (std::int64_t j = 0; j < p.grad.numel(); ++j)
        p.grad.data<float>()[j] = magnitude * stream.normal(counter++);
      grads.write(static_cast<const char*>(p.grad.raw()),
                  static_cast<std::streamsize>(p.grad.bytes()));
    }
    adamw.step(lrs[step], adamw.grad_norm());
  }
  grads.close();
  nlohmann::json setup = {{"shapes", shapes},    {"decay", decay}, {"lrs", lrs},
                          {"beta1", 0.8},        {"beta2", 0.9},   {"eps", 1e-6},
                          {"weight_decay", 0.3}, {"clip", 2.5}};
  test::write_file(dir / "setup.json", setup.dump());
  const auto ref = test::run_shell(
      test::python() + " " + (test::source_dir() / "tests/reference/adamw_reference.py").string() +
      " " + dir.path().string());
  ASSERT_EQ(ref.exit_code, 0) << ref.out;
  const std::string bytes = test::read_file(dir / "final.bin");
  const auto* expected = reinterpret_cast<const float*>(bytes.data());
  std::size_t offset = 0;
  for (const auto& p : params.all()) {
    for (std::int64_t j = 0; j < p.value.numel(); ++j) {
      const float e = expected[offset + static_cast<std::size_t>(j)];
      EXPECT_NEAR(p.value.data<float>()[j], e, 1e-6 * std::max(1.0f, std::abs(e)))
          << p.name << "[" << j << "]";
    }
    offset += static_cast<std::size_t>(p.value.numel());
  }
  EXPECT_EQ(adamw.steps_taken(), 5);
}

}  // namespace
}  // namespace metamorph

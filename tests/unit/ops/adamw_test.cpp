// AdamW against torch.optim.AdamW over several steps.
#include <gtest/gtest.h>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

using test::relative_error;

TEST(AdamW, FiveStepsMatchTorchOptimAdamW) {
  struct Case {
    std::int64_t n;
    AdamWHyper hyper;
  };
  AdamWHyper decayed;
  decayed.lr = 1e-2f;
  decayed.beta1 = 0.9f;
  decayed.beta2 = 0.95f;
  decayed.eps = 1e-8f;
  decayed.weight_decay = 0.1f;
  AdamWHyper plain;
  plain.lr = 3e-3f;
  plain.beta1 = 0.8f;
  plain.beta2 = 0.999f;
  plain.eps = 1e-6f;
  plain.weight_decay = 0.0f;
  const std::vector<Case> cases = {{37, decayed}, {70000, plain}};
  constexpr int kSteps = 5;
  Arena arena;
  CpuBackend cpu(arena);
  test::TempDir dir;
  struct Result {
    Tensor param, m, v;
  };
  std::vector<Result> results;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const auto cd = test::case_dir(dir.path(), i);
    const auto seed = static_cast<std::uint32_t>(500 + 10 * i);
    Result r{test::random_tensor(cpu, {c.n}, seed), cpu.zeros({c.n}), cpu.zeros({c.n})};
    Tensor grads = test::random_tensor(cpu, {kSteps, c.n}, seed + 1);
    test::save_npy(cd / "param.npy", r.param);
    test::save_npy(cd / "grads.npy", grads);
    // The float hyper-parameters exactly, so torch rounds them the way the backend does.
    test::save_json(cd / "params.json",
                    {{"lr", static_cast<double>(c.hyper.lr)},
                     {"beta1", static_cast<double>(c.hyper.beta1)},
                     {"beta2", static_cast<double>(c.hyper.beta2)},
                     {"eps", static_cast<double>(c.hyper.eps)},
                     {"weight_decay", static_cast<double>(c.hyper.weight_decay)}});
    for (int step = 1; step <= kSteps; ++step) {
      AdamWHyper hyper = c.hyper;
      hyper.step = step;
      cpu.adamw_step(r.param, grads.slice(step - 1, step).view({c.n}), r.m, r.v, hyper);
    }
    results.push_back(r);
  }
  test::run_reference("ops_adamw.py", dir.path());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto cd = test::case_dir(dir.path(), i);
    SCOPED_TRACE("case " + std::to_string(i));
    EXPECT_LE(relative_error(results[i].param, test::load_npy(cd / "param_out.npy")), 1e-6);
    EXPECT_LE(relative_error(results[i].m, test::load_npy(cd / "m_out.npy")), 1e-6);
    EXPECT_LE(relative_error(results[i].v, test::load_npy(cd / "v_out.npy")), 1e-6);
  }
}

TEST(AdamW, RejectsStepZero) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor p = cpu.zeros({3}), g = cpu.zeros({3}), m = cpu.zeros({3}), v = cpu.zeros({3});
  AdamWHyper hyper;
  hyper.step = 0;
  EXPECT_THROW(cpu.adamw_step(p, g, m, v, hyper), InputError);
}

}  // namespace
}  // namespace metamorph

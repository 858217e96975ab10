// RMSNorm forward/backward against PyTorch autograd and against finite differences.
#include <gtest/gtest.h>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/ops/finite_difference.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

using test::relative_error;

TEST(RmsNorm, MatchesPyTorchForwardAndBackward) {
  struct Case {
    Shape x_shape;
    float eps;
  };
  // The 4-D case is Qwen3's QK-norm: [batch, seq, heads, head_dim] normalised per head.
  const std::vector<Case> cases = {
      {{7, 6}, 1e-6f}, {{16, 33}, 1e-5f}, {{2, 5, 3, 6}, 1e-6f}, {{300, 128}, 1e-5f}};
  Arena arena;
  CpuBackend cpu(arena);
  test::TempDir dir;
  struct Result {
    Tensor y, rstd, dx, dw;
  };
  std::vector<Result> results;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::int64_t n = c.x_shape.back();
    const std::int64_t rows = shape_numel(c.x_shape) / n;
    const auto case_dir = dir / ("case" + std::to_string(i));
    std::filesystem::create_directory(case_dir);
    const auto seed = static_cast<std::uint32_t>(100 + 10 * i);
    Tensor x = test::random_tensor(cpu, c.x_shape, seed, -2.0f, 2.0f);
    Tensor w = test::random_tensor(cpu, {n}, seed + 1, 0.5f, 1.5f);
    Tensor dy = test::random_tensor(cpu, c.x_shape, seed + 2);
    Tensor dw0 = test::random_tensor(cpu, {n}, seed + 3);
    test::save_npy(case_dir / "x.npy", x);
    test::save_npy(case_dir / "w.npy", w);
    test::save_npy(case_dir / "dy.npy", dy);
    test::save_npy(case_dir / "dw0.npy", dw0);
    test::save_json(case_dir / "params.json", {{"eps", static_cast<double>(c.eps)}});

    Result r{cpu.empty(c.x_shape), cpu.empty({rows}), cpu.empty(c.x_shape), cpu.empty({n})};
    cpu.copy(dw0, r.dw);  // dw accumulates onto what is there
    const Tensor x2 = x.view({rows, n});
    Tensor y2 = r.y.view({rows, n}), dx2 = r.dx.view({rows, n});
    cpu.rmsnorm_forward(x2, w, c.eps, y2, r.rstd);
    cpu.rmsnorm_backward(dy.view({rows, n}), x2, w, r.rstd, dx2, r.dw);
    results.push_back(r);
  }
  test::run_reference("ops_rmsnorm.py", dir.path());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto case_dir = dir / ("case" + std::to_string(i));
    SCOPED_TRACE("case " + std::to_string(i) + " x " + shape_string(cases[i].x_shape));
    EXPECT_LE(relative_error(results[i].y, test::load_npy(case_dir / "y.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].rstd, test::load_npy(case_dir / "rstd.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].dx, test::load_npy(case_dir / "dx.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].dw, test::load_npy(case_dir / "dw.npy")), 1e-5);
  }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  Arena arena;
  CpuBackend cpu(arena);
  const std::int64_t rows = 5, n = 7;
  const float eps = 1e-5f;
  Tensor x = test::random_tensor(cpu, {rows, n}, 1, -2.0f, 2.0f);
  Tensor w = test::random_tensor(cpu, {n}, 2, 0.5f, 1.5f);
  Tensor weights = test::random_tensor(cpu, {rows, n}, 3);
  Tensor y = cpu.empty({rows, n}), rstd = cpu.empty({rows});
  auto objective = [&] {
    cpu.rmsnorm_forward(x, w, eps, y, rstd);
    return test::weighted_sum(y, weights);
  };
  const auto numeric_dx = test::numeric_gradient(x, objective);
  const auto numeric_dw = test::numeric_gradient(w, objective);
  objective();
  Tensor dx = cpu.empty({rows, n}), dw = cpu.zeros({n});
  cpu.rmsnorm_backward(weights, x, w, rstd, dx, dw);
  EXPECT_LE(relative_error(dx, numeric_dx), test::kFiniteDifferenceTolerance);
  EXPECT_LE(relative_error(dw, numeric_dw), test::kFiniteDifferenceTolerance);
}

}  // namespace
}  // namespace metamorph

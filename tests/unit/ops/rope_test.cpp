// RoPE against a float64 PyTorch rotate_half reference, and the inverse as its exact transpose.
#include <gtest/gtest.h>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/ops/finite_difference.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

using test::relative_error;

TEST(Rope, MatchesPyTorchRotateHalfForwardAndBackward) {
  struct Case {
    Shape shape;
    std::vector<std::int32_t> positions;
    float theta;
  };
  std::vector<std::int32_t> long_positions;
  for (std::int32_t i = 0; i < 65; ++i) long_positions.push_back(17 + 31 * i);
  const std::vector<Case> cases = {
      {{2, 7, 3, 6}, {0, 1, 2, 3, 4, 5, 6}, 10000.0f},
      {{1, 5, 2, 8}, {100, 103, 7, 0, 4095}, 1e6f},
      {{2, 65, 4, 64}, long_positions, 500000.0f},  // large enough for the parallel path
  };
  Arena arena;
  CpuBackend cpu(arena);
  test::TempDir dir;
  std::vector<Tensor> ys, dxs;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const auto cd = test::case_dir(dir.path(), i);
    const auto seed = static_cast<std::uint32_t>(200 + 10 * i);
    Tensor x = test::random_tensor(cpu, c.shape, seed);
    Tensor dy = test::random_tensor(cpu, c.shape, seed + 1);
    Tensor positions = test::int_tensor(cpu, c.positions);
    test::save_npy(cd / "x.npy", x);
    test::save_npy(cd / "dy.npy", dy);
    test::save_npy(cd / "positions.npy", positions);
    test::save_json(cd / "params.json", {{"theta", static_cast<double>(c.theta)}});
    cpu.rope(x, positions, c.theta, false);
    cpu.rope(dy, positions, c.theta, true);  // the backward: dx = R^T dy
    ys.push_back(x);
    dxs.push_back(dy);
  }
  test::run_reference("ops_rope.py", dir.path());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto cd = test::case_dir(dir.path(), i);
    SCOPED_TRACE("case " + std::to_string(i) + " " + shape_string(cases[i].shape));
    EXPECT_LE(relative_error(ys[i], test::load_npy(cd / "y.npy")), 1e-5);
    EXPECT_LE(relative_error(dxs[i], test::load_npy(cd / "dx.npy")), 1e-5);
  }
}

TEST(Rope, InverseIsTheTransposeAndUndoesTheRotation) {
  Arena arena;
  CpuBackend cpu(arena);
  const Shape shape{2, 5, 3, 10};
  Tensor positions = test::int_tensor(cpu, {3, 0, 9, 1000, 12});
  Tensor x = test::random_tensor(cpu, shape, 1), y = test::random_tensor(cpu, shape, 2);
  Tensor rx = cpu.empty(shape), ry = cpu.empty(shape);
  cpu.copy(x, rx);
  cpu.copy(y, ry);
  cpu.rope(rx, positions, 10000.0f, false);
  cpu.rope(ry, positions, 10000.0f, true);
  // <R x, y> == <x, R^T y>
  EXPECT_NEAR(test::weighted_sum(rx, y), test::weighted_sum(x, ry), 1e-5);
  cpu.rope(rx, positions, 10000.0f, true);
  EXPECT_LE(relative_error(rx, test::to_doubles(x)), 1e-6);
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  Arena arena;
  CpuBackend cpu(arena);
  const Shape shape{1, 3, 2, 6};
  Tensor positions = test::int_tensor(cpu, {0, 5, 11});
  Tensor x = test::random_tensor(cpu, shape, 3), weights = test::random_tensor(cpu, shape, 4);
  Tensor y = cpu.empty(shape);
  const auto numeric = test::numeric_gradient(x, [&] {
    cpu.copy(x, y);
    cpu.rope(y, positions, 10000.0f, false);
    return test::weighted_sum(y, weights);
  });
  Tensor dx = cpu.empty(shape);
  cpu.copy(weights, dx);
  cpu.rope(dx, positions, 10000.0f, true);
  EXPECT_LE(relative_error(dx, numeric), test::kFiniteDifferenceTolerance);
}

TEST(Rope, RejectsAnOddHeadDim) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor x = cpu.zeros({1, 2, 1, 5});
  Tensor positions = test::int_tensor(cpu, {0, 1});
  EXPECT_THROW(cpu.rope(x, positions, 10000.0f, false), InputError);
}

}  // namespace
}  // namespace metamorph

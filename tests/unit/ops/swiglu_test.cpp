// SwiGLU against PyTorch autograd and finite differences.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/ops/finite_difference.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

using test::relative_error;

TEST(SwiGlu, MatchesPyTorchForwardAndBackward) {
  const std::vector<Shape> shapes = {{7, 37}, {300, 130}};
  Arena arena;
  CpuBackend cpu(arena);
  test::TempDir dir;
  struct Result {
    Tensor out, dgate, dup;
  };
  std::vector<Result> results;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto cd = test::case_dir(dir.path(), i);
    const auto seed = static_cast<std::uint32_t>(300 + 10 * i);
    Tensor gate = test::random_tensor(cpu, shapes[i], seed, -4.0f, 4.0f);
    // Saturated gates: silu and its derivative must stay finite.
    gate.data<float>()[0] = -90.0f;
    gate.data<float>()[1] = 90.0f;
    Tensor up = test::random_tensor(cpu, shapes[i], seed + 1);
    Tensor dout = test::random_tensor(cpu, shapes[i], seed + 2);
    test::save_npy(cd / "gate.npy", gate);
    test::save_npy(cd / "up.npy", up);
    test::save_npy(cd / "dout.npy", dout);
    test::save_json(cd / "params.json", nlohmann::json::object());
    Result r{cpu.empty(shapes[i]), cpu.empty(shapes[i]), cpu.empty(shapes[i])};
    cpu.swiglu_forward(gate, up, r.out);
    cpu.swiglu_backward(dout, gate, up, r.dgate, r.dup);
    results.push_back(r);
  }
  test::run_reference("ops_swiglu.py", dir.path());
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto cd = test::case_dir(dir.path(), i);
    SCOPED_TRACE("case " + std::to_string(i));
    EXPECT_LE(relative_error(results[i].out, test::load_npy(cd / "out.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].dgate, test::load_npy(cd / "dgate.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].dup, test::load_npy(cd / "dup.npy")), 1e-5);
  }
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  Arena arena;
  CpuBackend cpu(arena);
  const Shape shape{4, 9};
  Tensor gate = test::random_tensor(cpu, shape, 1, -3.0f, 3.0f);
  Tensor up = test::random_tensor(cpu, shape, 2);
  Tensor weights = test::random_tensor(cpu, shape, 3);
  Tensor out = cpu.empty(shape);
  auto objective = [&] {
    cpu.swiglu_forward(gate, up, out);
    return test::weighted_sum(out, weights);
  };
  const auto numeric_gate = test::numeric_gradient(gate, objective);
  const auto numeric_up = test::numeric_gradient(up, objective);
  Tensor dgate = cpu.empty(shape), dup = cpu.empty(shape);
  cpu.swiglu_backward(weights, gate, up, dgate, dup);
  EXPECT_LE(relative_error(dgate, numeric_gate), test::kFiniteDifferenceTolerance);
  EXPECT_LE(relative_error(dup, numeric_up), test::kFiniteDifferenceTolerance);
}

}  // namespace
}  // namespace metamorph

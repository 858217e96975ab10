// Reductions must not depend on the number of threads: bit-exact resume and layout-invariant
// loss curves rest on it.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

struct Outputs {
  Tensor out, lse, dq, dk, dv, dw;
  double loss = 0.0, squares = 0.0;
};

Outputs run_ops(CpuBackend& cpu, int threads) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  const Shape q_shape{2, 70, 4, 16}, kv_shape{2, 70, 2, 16};
  Tensor q = test::random_tensor(cpu, q_shape, 1), k = test::random_tensor(cpu, kv_shape, 2);
  Tensor v = test::random_tensor(cpu, kv_shape, 3), dout = test::random_tensor(cpu, q_shape, 4);
  Outputs o{cpu.empty(q_shape),  cpu.empty({2, 4, 70}), cpu.empty(q_shape),
            cpu.empty(kv_shape), cpu.empty(kv_shape),   cpu.zeros({64})};
  AttentionMask mask;
  mask.kind = MaskKind::block_diffusion;
  mask.block_size = 8;
  mask.clean_offset = 35;
  cpu.attention_forward(q, k, v, mask, 0.25f, o.out, o.lse, 0);
  cpu.attention_backward(dout, q, k, v, o.out, o.lse, mask, 0.25f, o.dq, o.dk, o.dv, 0);

  Tensor x = test::random_tensor(cpu, {1000, 64}, 5), w = test::random_tensor(cpu, {64}, 6);
  Tensor y = cpu.empty({1000, 64}), rstd = cpu.empty({1000}), dx = cpu.empty({1000, 64});
  cpu.rmsnorm_forward(x, w, 1e-5f, y, rstd);
  cpu.rmsnorm_backward(x, x, w, rstd, dx, o.dw);

  Tensor logits = test::random_tensor(cpu, {300, 200}, 7), lse = cpu.empty({300});
  std::vector<std::int32_t> ids(300);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(i % 200);
  o.loss = cpu.cross_entropy_forward(logits, test::int_tensor(cpu, ids), -100, lse);
  o.squares = cpu.sum_squares(test::random_tensor(cpu, {300000}, 8));
  omp_set_num_threads(saved);
  return o;
}

TEST(Determinism, ReductionsAreBitIdenticalForAnyThreadCount) {
  Arena arena;
  CpuBackend cpu(arena);
  const Outputs one = run_ops(cpu, 1), three = run_ops(cpu, 3);
  EXPECT_TRUE(bitwise_equal(one.out, three.out));
  EXPECT_TRUE(bitwise_equal(one.lse, three.lse));
  EXPECT_TRUE(bitwise_equal(one.dq, three.dq));
  EXPECT_TRUE(bitwise_equal(one.dk, three.dk));
  EXPECT_TRUE(bitwise_equal(one.dv, three.dv));
  EXPECT_TRUE(bitwise_equal(one.dw, three.dw));
  EXPECT_EQ(one.loss, three.loss);
  EXPECT_EQ(one.squares, three.squares);
}

}  // namespace
}  // namespace metamorph

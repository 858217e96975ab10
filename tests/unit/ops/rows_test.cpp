// Row gather, weighted scatter-add and row dot products (the MoE token permutation) against
// plain loops written here, with repeated and unused indices; results independent of threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

Tensor indices(CpuBackend& cpu, std::int64_t m, std::int64_t n) {
  Tensor index = cpu.empty({m}, DType::i32);
  // Repeats and gaps: row r goes to (7 r + 3) mod n.
  for (std::int64_t r = 0; r < m; ++r)
    index.data<std::int32_t>()[r] = static_cast<std::int32_t>((7 * r + 3) % n);
  return index;
}

TEST(RowOps, GatherScatterAndRowDotMatchPlainLoops) {
  Arena arena;
  CpuBackend cpu(arena);
  const std::int64_t n = 23, m = 57, h = 300;  // m * h above the OpenMP threshold
  const Tensor src = test::random_tensor(cpu, {n, h}, 1),
               rows = test::random_tensor(cpu, {m, h}, 2);
  const Tensor weights = test::random_tensor(cpu, {m}, 3), index = indices(cpu, m, n);
  const auto* idx = index.data<std::int32_t>();
  const float* w = weights.data<float>();
  for (bool weighted : {false, true}) {
    Tensor gathered = cpu.empty({m, h});
    cpu.gather_rows(src, index, weighted ? weights : Tensor(), gathered);
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t j = 0; j < h; ++j)
        ASSERT_EQ(gathered.data<float>()[r * h + j],
                  (weighted ? w[r] : 1.0f) * src.data<float>()[idx[r] * h + j]);
    Tensor dst = test::random_tensor(cpu, {n, h}, 4);
    std::vector<double> expected(dst.data<float>(), dst.data<float>() + n * h);
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t j = 0; j < h; ++j)
        expected[static_cast<std::size_t>(idx[r] * h + j)] +=
            static_cast<double>(weighted ? w[r] : 1.0f) * rows.data<float>()[r * h + j];
    cpu.scatter_add_rows(rows, index, weighted ? weights : Tensor(), dst);
    for (std::int64_t i = 0; i < n * h; ++i)
      ASSERT_NEAR(dst.data<float>()[i], expected[static_cast<std::size_t>(i)], 1e-5);
  }
  Tensor dots = cpu.empty({m});
  cpu.row_dot(rows, test::random_tensor(cpu, {m, h}, 5), dots);
  const Tensor other = test::random_tensor(cpu, {m, h}, 5);
  for (std::int64_t r = 0; r < m; ++r) {
    double d = 0;
    for (std::int64_t j = 0; j < h; ++j)
      d += static_cast<double>(rows.data<float>()[r * h + j]) * other.data<float>()[r * h + j];
    EXPECT_NEAR(dots.data<float>()[r], d, 1e-5 * (1 + std::abs(d)));
  }
}

TEST(RowOps, ResultsDoNotDependOnTheThreadCount) {
  Arena arena;
  CpuBackend cpu(arena);
  const std::int64_t n = 40, m = 200, h = 256;
  const Tensor src = test::random_tensor(cpu, {n, h}, 1),
               rows = test::random_tensor(cpu, {m, h}, 2);
  const Tensor weights = test::random_tensor(cpu, {m}, 3), index = indices(cpu, m, n);
  std::vector<Tensor> out;
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    Tensor g = cpu.empty({m, h}), s = cpu.zeros({n, h}), d = cpu.empty({m});
    cpu.gather_rows(src, index, weights, g);
    cpu.scatter_add_rows(rows, index, weights, s);
    cpu.row_dot(rows, g, d);
    out.insert(out.end(), {g, s, d});
  }
  omp_set_num_threads(saved);
  for (std::size_t i = 0; i < 3; ++i)
    EXPECT_EQ(std::memcmp(out[i].raw(), out[i + 3].raw(), out[i].bytes()), 0) << "output " << i;
}

}  // namespace
}  // namespace metamorph

// The fixes to the simple ops: bad token ids are the user's error and are caught before any
// memory is touched, an empty inner product gives beta * c, i64 tensors can be filled.
#include <gtest/gtest.h>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

TEST(SimpleOps, EmbeddingRejectsTokenIdsOutsideTheVocabulary) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor table = cpu.zeros({4, 2}), out = cpu.empty({2, 2}), dtable = cpu.zeros({4, 2});
  Tensor dout = cpu.zeros({2, 2});
  for (std::int32_t bad : {-1, 4}) {
    Tensor ids = test::int_tensor(cpu, {1, bad});
    EXPECT_THROW(cpu.embedding_forward(table, ids, out), InputError);
    EXPECT_THROW(cpu.embedding_backward(ids, dout, dtable), InputError);
  }
}

TEST(SimpleOps, MatmulWithEmptyInnerDimensionScalesC) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor a = cpu.empty({3, 0}), b = cpu.empty({0, 2}), c = cpu.empty({3, 2});
  cpu.fill(c, 2.0f);
  cpu.matmul(a, false, b, false, c, 1.0f, 0.5f);
  for (std::int64_t i = 0; i < c.numel(); ++i) EXPECT_EQ(c.data<float>()[i], 1.0f);
  cpu.matmul(a, false, b, false, c, 1.0f, 0.0f);
  for (std::int64_t i = 0; i < c.numel(); ++i) EXPECT_EQ(c.data<float>()[i], 0.0f);
}

TEST(SimpleOps, FillsInt64Tensors) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor t = cpu.empty({3}, DType::i64);
  cpu.fill(t, 7.0f);
  for (std::int64_t i = 0; i < 3; ++i) EXPECT_EQ(t.data<std::int64_t>()[i], 7);
}

TEST(SimpleOps, SumSquaresOverManyChunks) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor x = cpu.empty({200001});
  cpu.fill(x, 0.5f);
  EXPECT_DOUBLE_EQ(cpu.sum_squares(x), 0.25 * 200001);
}

}  // namespace
}  // namespace metamorph

// cuBLASLt GEMMs of the CUDA backend against OpenBLAS: every transpose pair, odd sizes, alpha and
// beta, f32 and bf16 inputs with f32 or bf16 outputs, and row slices (unaligned pointers).
#include "runtime/core/error.hpp"
#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

struct GemmShape {
  std::int64_t m, n, k;
};
const GemmShape kShapes[] = {{1, 1, 1},       {7, 5, 3},       {33, 17, 65},  {64, 128, 256},
                             {129, 257, 100}, {512, 384, 768}, {1, 1000, 37}, {300, 2, 2049}};

struct Types {
  DType in, out;
};
const Types kTypes[] = {
    {DType::f32, DType::f32}, {DType::bf16, DType::f32}, {DType::bf16, DType::bf16}};

using Matmul = GpuOpTest;

TEST_F(Matmul, EveryShapeTransposeAndDtype) {
  for (const GemmShape& s : kShapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (const Types& types : kTypes)
          for (float beta : {0.0f, 0.5f}) {
            SCOPED_TRACE(concat("m=", s.m, " n=", s.n, " k=", s.k, ta ? " A^T" : "",
                                tb ? " B^T" : "", " ", dtype_name(types.in), "->",
                                dtype_name(types.out), " beta=", beta));
            Tensor a = random(ta ? Shape{s.k, s.m} : Shape{s.m, s.k}, types.in);
            Tensor b = random(tb ? Shape{s.n, s.k} : Shape{s.k, s.n}, types.in);
            Tensor c = random({s.m, s.n}, types.out);
            Tensor gc = beta == 0.0f ? poisoned({s.m, s.n}, types.out) : up(c, types.out);
            cpu_->matmul(a, ta, b, tb, c, 0.75f, beta);
            gpu_->matmul(up(a, types.in), ta, up(b, types.in), tb, gc, 0.75f, beta);
            EXPECT_CLOSE(gc, c, types.out, "matmul");
          }
}

TEST_F(Matmul, EmptyInnerDimensionScalesC) {
  Tensor a = random({3, 0}), b = random({0, 2}), c = random({3, 2});
  Tensor gc = up(c);
  cpu_->matmul(a, false, b, false, c, 1.0f, 0.5f);
  gpu_->matmul(up(a), false, up(b), false, gc, 1.0f, 0.5f);
  EXPECT_CLOSE(gc, c, DType::f32, "k = 0");
}

// Slices start at any row, so operand pointers need not be 16-byte aligned.
TEST_F(Matmul, RowSlicesOfLargerTensors) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    Tensor a = random({41, 13}, dtype), b = random({13, 9}, dtype);
    Tensor ga = up(a, dtype).slice(3, 40), gb = up(b, dtype);
    Tensor c = cpu_->empty({37, 9});
    cpu_->matmul(a.slice(3, 40), false, b, false, c, 1.0f, 0.0f);
    Tensor gc = poisoned({38, 9}, DType::f32).slice(1, 38);
    gpu_->matmul(ga, false, gb, false, gc, 1.0f, 0.0f);
    EXPECT_CLOSE(gc, c, dtype, "sliced matmul");
  }
}

}  // namespace
}  // namespace metamorph::gpu_test

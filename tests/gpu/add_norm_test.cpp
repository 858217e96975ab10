// The residual add fused with RMSNorm (add_rmsnorm_forward, rmsnorm_backward_add) of the CUDA
// backend: bit for bit against the two ops it replaces run on the GPU, and against the CPU
// backend within the usual bound.
//
// Why bit for bit: the fused ops promise the composition's values, so a model trains to the same
// bits whichever path a shape takes. bf16 inputs make the test sharp: r + x of two random bf16
// values is rarely a bf16 value, so a kernel that normalised the unrounded sum (or added the
// residual gradient to an unrounded dx) changes y and rstd (dx) in many rows.
#include <cstring>

#include "runtime/backends/cuda/cuda_kernel_variants.hpp"
#include "runtime/backends/cuda/cuda_transfer.hpp"
#include "runtime/core/error.hpp"
#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16};
constexpr float kEps = 1e-5f;

// One case's host inputs: the summands x and r, the weight, the norm's output gradient, the
// residual branch's gradient and what dw holds before (it accumulates).
struct Inputs {
  std::int64_t n = 0, rows = 0;
  Tensor x, r, w, dy, residual_grad, dw_start;
};

class AddNorm : public GpuOpTest {
 protected:
  Inputs inputs(const Shape& shape, DType dtype) {
    Inputs in;
    in.n = shape.back();
    in.rows = shape_numel(shape) / in.n;
    in.x = random(shape, dtype, -1.0f, 1.0f);
    in.r = random(shape, dtype, -2.0f, 2.0f);
    in.w = random({in.n}, DType::f32, 0.5f, 1.5f);
    in.dy = random(shape, dtype);
    in.residual_grad = random(shape, dtype);
    in.dw_start = random({in.n});
    return in;
  }
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

// The warp kernels: 2048 and 4096 (bf16 forward prefetched, one warp per row; at 4096 the f32
// backward is refused by the warp kernels and both paths run the composition), 1000 (lanes
// without a run) and 2056 (16 runs per lane, the last partly empty; the f32 backward falls back);
// 2047 (no 16-byte runs) falls back everywhere. The bf16 backward above 2048 (2056, 4096) runs
// on warp pairs. Odd row counts, and more rows than the device holds warps (5003: a warp walks
// two rows, prefetched in turn, and the dw sums span every block; 3001 at 4096: a warp pair walks
// several).
const Shape kShapes[] = {{37, 2048}, {5003, 2048}, {2, 3, 4096}, {131, 4096}, {37, 1000},
                         {67, 2056}, {9, 2047},    {1, 2048},    {3001, 4096}};

TEST_F(AddNorm, FusedMatchesTheCompositionBitForBit) {
  for (const Shape& shape : kShapes)
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype));
      const Inputs in = inputs(shape, dtype);
      const auto& [n, rows, x, r, w, dy, residual_grad, dw_start] = in;
      const Tensor gx = up(x, dtype), gw = up(w), gdy = up(dy, dtype);
      const Tensor gres = up(residual_grad, dtype);

      // Forward.
      Tensor fused_r = up(r, dtype), fused_y = poisoned(shape, dtype);
      Tensor fused_rstd = poisoned({rows}, DType::f32);
      gpu_->add_rmsnorm_forward(gx, fused_r, gw, kEps, fused_y, fused_rstd);
      Tensor r2 = up(r, dtype), y2 = poisoned(shape, dtype), rstd2 = poisoned({rows}, DType::f32);
      gpu_->axpy(1.0f, gx, r2);
      gpu_->rmsnorm_forward(r2, gw, kEps, y2, rstd2);
      EXPECT_TRUE(same_bits(down(fused_r), down(r2))) << "r";
      EXPECT_TRUE(same_bits(down(fused_y), down(y2))) << "y";
      EXPECT_TRUE(same_bits(down(fused_rstd), down(rstd2))) << "rstd";

      // Backward, at the composition's r and rstd.
      Tensor fused_dx = poisoned(shape, dtype), fused_dw = up(dw_start);
      gpu_->rmsnorm_backward_add(gdy, r2, gw, rstd2, gres, fused_dx, fused_dw);
      Tensor dx2 = poisoned(shape, dtype), dw2 = up(dw_start);
      gpu_->rmsnorm_backward(gdy, r2, gw, rstd2, dx2, dw2);
      gpu_->axpy(1.0f, gres, dx2);
      const Tensor expected_dx = down(dx2), expected_dw = down(dw2);
      EXPECT_TRUE(same_bits(down(fused_dx), expected_dx)) << "dx";
      EXPECT_TRUE(same_bits(down(fused_dw), expected_dw)) << "dw";

      // In place: dx is dy.
      Tensor in_place = up(dy, dtype), in_place_dw = up(dw_start);
      gpu_->rmsnorm_backward_add(in_place, r2, gw, rstd2, gres, in_place, in_place_dw);
      EXPECT_TRUE(same_bits(down(in_place), expected_dx)) << "dx in place";
      EXPECT_TRUE(same_bits(down(in_place_dw), expected_dw)) << "dw in place";
    }
}

// Every kernel variant's fused backward against the same kernel's plain backward and the axpy
// (the plain kernels meet the CPU backend in NormRopeEmbedding.RmsNormForwardAndBackward): the
// variants that prefetch the residual gradient (warp_quad at 4096, warp_pair and warp_quad at
// 2048 and 2056) and those that load it late, in place too.
TEST_F(AddNorm, EveryKernelsFusedBackwardMatchesItsComposition) {
  for (const Shape& shape : kShapes)
    for (DType dtype : kFloatTypes) {
      const Inputs in = inputs(shape, dtype);
      const auto& [n, rows, x, r, w, dy, residual_grad, dw_start] = in;
      const Tensor gr = up(r, dtype), gw = up(w), gdy = up(dy, dtype);
      const Tensor gres = up(residual_grad, dtype);
      Tensor y = poisoned(shape, dtype), rstd = poisoned({rows}, DType::f32);
      gpu_->rmsnorm_forward(gr, gw, kEps, y, rstd);
      for (cuda::RmsNormKernel kernel : cuda::kRmsNormKernels) {
        SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype) + " " + cuda::kernel_name(kernel));
        Tensor fused_dx = poisoned(shape, dtype), fused_dw = up(dw_start);
        cuda::rmsnorm_backward_add_with(kernel, *gpu_, gdy, gr, gw, rstd, gres, fused_dx, fused_dw);
        Tensor dx = poisoned(shape, dtype), dw = up(dw_start);
        cuda::rmsnorm_backward_with(kernel, *gpu_, gdy, gr, gw, rstd, dx, dw);
        gpu_->axpy(1.0f, gres, dx);
        const Tensor expected_dx = down(dx), expected_dw = down(dw);
        EXPECT_TRUE(same_bits(down(fused_dx), expected_dx)) << "dx";
        EXPECT_TRUE(same_bits(down(fused_dw), expected_dw)) << "dw";
        Tensor in_place = up(dy, dtype), in_place_dw = up(dw_start);
        cuda::rmsnorm_backward_add_with(kernel, *gpu_, in_place, gr, gw, rstd, gres, in_place,
                                        in_place_dw);
        EXPECT_TRUE(same_bits(down(in_place), expected_dx)) << "dx in place";
        EXPECT_TRUE(same_bits(down(in_place_dw), expected_dw)) << "dw in place";
      }
    }
}

TEST_F(AddNorm, FusedMatchesTheCpuBackend) {
  for (const Shape& shape : kShapes)
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype));
      const Inputs in = inputs(shape, dtype);
      const auto& [n, rows, x, r, w, dy, residual_grad, dw_start] = in;

      // The CPU reference: axpy, then the norm. Its bf16 cases run in f32, so the sum is rounded
      // to bf16 here as the GPU stores r; otherwise the norms (and dw, with the f32 bound) would
      // see different inputs.
      Tensor cpu_r = cpu_->empty(shape), y = cpu_->empty(shape), rstd = cpu_->empty({rows});
      cpu_->copy(r, cpu_r);
      cpu_->axpy(1.0f, x, cpu_r);
      if (dtype == DType::bf16)
        for (std::int64_t i = 0; i < cpu_r.numel(); ++i)
          cpu_r.data<float>()[i] = cuda::bf16_to_float(cuda::float_to_bf16(cpu_r.data<float>()[i]));
      cpu_->rmsnorm_forward(cpu_r, w, kEps, y, rstd);
      Tensor dx = cpu_->empty(shape), dw = cpu_->empty({n});
      cpu_->copy(dw_start, dw);
      cpu_->rmsnorm_backward_add(dy, cpu_r, w, rstd, residual_grad, dx, dw);

      Tensor gr = up(r, dtype), gy = poisoned(shape, dtype), grstd = poisoned({rows}, DType::f32);
      const Tensor gw = up(w);
      gpu_->add_rmsnorm_forward(up(x, dtype), gr, gw, kEps, gy, grstd);
      EXPECT_CLOSE(gr, cpu_r, dtype, "r");
      EXPECT_CLOSE(gy, y, dtype, "y");
      EXPECT_CLOSE(grstd, rstd, DType::f32, "rstd");
      Tensor gdx = poisoned(shape, dtype), gdw = up(dw_start);
      gpu_->rmsnorm_backward_add(up(dy, dtype), gr, gw, grstd, up(residual_grad, dtype), gdx, gdw);
      EXPECT_CLOSE(gdx, dx, dtype, "dx");
      EXPECT_CLOSE(gdw, dw, DType::f32, "dw");
    }
}

// A bad epsilon is refused as by the composition (whose rmsnorm_forward checks it), not run.
TEST_F(AddNorm, RefusesABadEpsilonAsTheCompositionDoes) {
  const Shape shape{4, 2048};
  Tensor x = up(random(shape, DType::bf16), DType::bf16),
         r = up(random(shape, DType::bf16), DType::bf16);
  Tensor w = up(random({2048}, DType::f32, 0.5f, 1.5f));
  Tensor y = gpu_->empty(shape, DType::bf16), rstd = gpu_->empty({4});
  EXPECT_THROW(gpu_->add_rmsnorm_forward(x, r, w, -1.0f, y, rstd), InputError);
}

}  // namespace
}  // namespace metamorph::gpu_test

// Elementwise ops, reductions, SwiGLU and AdamW of the CUDA backend against the CPU backend.
#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/backends/cuda/cuda_transfer.hpp"
#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16};
// Runs of 8 with wide loads and an element-by-element tail (7: tail only; 2048: no tail).
const std::int64_t kSizes[] = {1, 7, 33, 1000, 2048, 2056, 65537, 300001};
const Shape kMatrices[] = {{1, 1},     {3, 7},    {17, 33},  {128, 257},
                           {1000, 64}, {5, 4099}, {6, 2048}, {3, 2056}};

using ElementwiseOps = GpuOpTest;

TEST_F(ElementwiseOps, FillEveryDtype) {
  for (std::int64_t n : kSizes) {
    for (DType dtype : {DType::f32, DType::bf16, DType::i32, DType::i64}) {
      Tensor t = gpu_->empty({n}, dtype);
      gpu_->fill(t, 3.0f);
      Tensor host = cuda::to_host(t, host_arena_);
      for (std::int64_t i = 0; i < n; ++i) {
        double v = 0;
        switch (dtype) {
          case DType::f32:
            v = host.data<float>()[i];
            break;
          case DType::bf16:
            v = cuda::bf16_to_float(host.data<std::uint16_t>()[i]);
            break;
          case DType::i32:
            v = host.data<std::int32_t>()[i];
            break;
          case DType::i64:
            v = static_cast<double>(host.data<std::int64_t>()[i]);
            break;
        }
        ASSERT_EQ(v, 3.0) << dtype_name(dtype) << " element " << i << " of " << n;
      }
    }
  }
}

TEST_F(ElementwiseOps, CopyAndConvert) {
  for (std::int64_t n : kSizes)
    for (DType from : kFloatTypes)
      for (DType to : kFloatTypes) {
        Tensor x = random({n}, DType::bf16);  // representable in both dtypes: copies are exact
        Tensor src = up(x, from), dst = poisoned({n}, to);
        gpu_->copy(src, dst);
        EXPECT_EQ(normalised_error(down(dst), x), 0.0)
            << dtype_name(from) << "->" << dtype_name(to);
      }
}

TEST_F(ElementwiseOps, AxpyAndScale) {
  for (std::int64_t n : kSizes)
    for (DType xt : kFloatTypes)
      for (DType yt : kFloatTypes) {
        SCOPED_TRACE(std::to_string(n) + " " + dtype_name(xt) + " into " + dtype_name(yt));
        Tensor x = random({n}, xt), y = random({n}, yt);
        Tensor gx = up(x, xt), gy = up(y, yt);
        cpu_->axpy(-0.75f, x, y);
        gpu_->axpy(-0.75f, gx, gy);
        EXPECT_CLOSE(gy, y, yt, "axpy");
        cpu_->scale(y, 1.5f);
        gpu_->scale(gy, 1.5f);
        EXPECT_CLOSE(gy, y, yt, "scale");
      }
}

TEST_F(ElementwiseOps, SumSquaresAndAllFinite) {
  for (std::int64_t n : kSizes)
    for (DType dtype : kFloatTypes) {
      Tensor x = random({n}, dtype);
      Tensor gx = up(x, dtype);
      const double want = cpu_->sum_squares(x), got = gpu_->sum_squares(gx);
      EXPECT_LT(std::abs(got - want) / want, 1e-9) << n << " " << dtype_name(dtype);
      // The no-wait form writes the same bits into its slot, and +0 for an empty tensor.
      Tensor sums = gpu_->empty({3}, DType::i64);
      gpu_->sum_squares_into(gx.slice(0, 0), sums, 0);
      gpu_->sum_squares_into(gx, sums, 2);
      const Tensor slots = gpu_->to_host(sums, DType::i64);
      const auto* slot = static_cast<const double*>(slots.raw());
      EXPECT_EQ(slot[2], got) << n << " " << dtype_name(dtype);
      EXPECT_EQ(slot[0], 0.0);
      EXPECT_FALSE(std::signbit(slot[0]));
      EXPECT_TRUE(gpu_->all_finite(gx));
      for (float bad :
           {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
        x.data<float>()[n / 2] = bad;
        EXPECT_FALSE(gpu_->all_finite(up(x, dtype))) << n << " " << dtype_name(dtype) << " " << bad;
      }
    }
}

TEST_F(ElementwiseOps, BiasForwardAndBackward) {
  for (const Shape& shape : kMatrices)
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype));
      Tensor x = random(shape, dtype), bias = random({shape[1]}, DType::f32);
      Tensor gx = up(x, dtype), gbias = up(bias);
      cpu_->add_bias(x, bias);
      gpu_->add_bias(gx, gbias);
      EXPECT_CLOSE(gx, x, dtype, "add_bias");
      // Accumulates into an f32 gradient that already holds values.
      Tensor dy = random(shape, dtype), dbias = random({shape[1]});
      Tensor gdbias = up(dbias);
      cpu_->bias_backward(dy, dbias);
      gpu_->bias_backward(up(dy, dtype), gdbias);
      EXPECT_CLOSE(gdbias, dbias, DType::f32, "bias_backward");
    }
}

TEST_F(ElementwiseOps, SwigluForwardAndBackward) {
  for (std::int64_t n : kSizes)
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(std::to_string(n) + " " + dtype_name(dtype));
      Tensor gate = random({n}, dtype, -6.0f, 6.0f), upv = random({n}, dtype);
      Tensor out = cpu_->empty({n});
      Tensor ggate = up(gate, dtype), gup = up(upv, dtype), gout = poisoned({n}, dtype);
      cpu_->swiglu_forward(gate, upv, out);
      gpu_->swiglu_forward(ggate, gup, gout);
      EXPECT_CLOSE(gout, out, dtype, "swiglu_forward");
      Tensor dout = random({n}, dtype), dgate = cpu_->empty({n}), dup = cpu_->empty({n});
      Tensor gdgate = poisoned({n}, dtype), gdup = poisoned({n}, dtype);
      cpu_->swiglu_backward(dout, gate, upv, dgate, dup);
      gpu_->swiglu_backward(up(dout, dtype), ggate, gup, gdgate, gdup);
      EXPECT_CLOSE(gdgate, dgate, dtype, "swiglu dgate");
      EXPECT_CLOSE(gdup, dup, dtype, "swiglu dup");
    }
}

TEST_F(ElementwiseOps, AdamWOverSeveralSteps) {
  for (std::int64_t n : kSizes)
    for (DType grad_type : kFloatTypes) {
      SCOPED_TRACE(std::to_string(n) + " grad " + dtype_name(grad_type));
      Tensor p = random({n}), m = cpu_->zeros({n}), v = cpu_->zeros({n});
      Tensor gp = up(p), gm = up(m), gv = up(v);
      AdamWHyper hyper;
      hyper.lr = 3e-3f;
      hyper.weight_decay = 0.1f;
      for (std::int64_t step = 1; step <= 3; ++step) {
        hyper.step = step;
        Tensor g = random({n}, grad_type);
        cpu_->adamw_step(p, g, m, v, hyper);
        gpu_->adamw_step(gp, up(g, grad_type), gm, gv, hyper);
      }
      EXPECT_LT(normalised_error(down(gp), p), 1e-6);
      EXPECT_LT(normalised_error(down(gm), m), 1e-6);
      EXPECT_LT(normalised_error(down(gv), v), 1e-6);
    }
}

// The fused form (bf16 or f32 weights written in the same pass) against adamw_step then copy:
// the same bits in the master, the moments and the weights.
TEST_F(ElementwiseOps, AdamWRoundedEqualsStepThenCopy) {
  auto same_bits = [&](const Tensor& a, const Tensor& b, const char* what) {
    const Tensor ha = down(a), hb = down(b);
    ASSERT_EQ(ha.numel(), hb.numel()) << what;
    EXPECT_EQ(std::memcmp(ha.raw(), hb.raw(), static_cast<std::size_t>(ha.bytes())), 0) << what;
  };
  for (std::int64_t n : kSizes)
    for (DType value_type : kFloatTypes) {
      SCOPED_TRACE(std::to_string(n) + " weights " + dtype_name(value_type));
      Tensor p = random({n}), m = random({n}), v = random({n}, DType::f32, 0.0f, 1.0f);
      Tensor p1 = up(p), m1 = up(m), v1 = up(v), p2 = up(p), m2 = up(m), v2 = up(v);
      Tensor value1 = poisoned({n}, value_type), value2 = poisoned({n}, value_type);
      AdamWHyper hyper;
      hyper.lr = 3e-3f;
      hyper.weight_decay = 0.1f;
      hyper.step = 2;
      const Tensor g = up(random({n}, DType::bf16), DType::bf16);
      gpu_->adamw_step(p1, g, m1, v1, hyper);
      gpu_->copy(p1, value1);
      gpu_->adamw_step_rounded(p2, g, m2, v2, hyper, value2);
      same_bits(p2, p1, "master");
      same_bits(m2, m1, "m");
      same_bits(v2, v1, "v");
      same_bits(value2, value1, "weights");
    }
}

// Views that start one element into their storage are not 16-byte aligned: the ops take the
// element-by-element path and must give the same results.
TEST_F(ElementwiseOps, UnalignedViewsTakeTheScalarPath) {
  const std::int64_t n = 2057;
  for (DType dtype : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor gate = random({n}, dtype, -6.0f, 6.0f), upv = random({n}, dtype), y = random({n}, dtype);
    Tensor ggate = up(gate, dtype), gup = up(upv, dtype), gy = up(y, dtype);
    Tensor gate_view = gate.slice(1, n), up_view = upv.slice(1, n), y_view = y.slice(1, n);
    Tensor ggate_view = ggate.slice(1, n), gup_view = gup.slice(1, n), gy_view = gy.slice(1, n);

    Tensor out = cpu_->empty({n - 1});
    Tensor gout_storage = poisoned({n}, dtype);
    Tensor gout = gout_storage.slice(1, n);
    cpu_->swiglu_forward(gate_view, up_view, out);
    gpu_->swiglu_forward(ggate_view, gup_view, gout);
    EXPECT_CLOSE(gout, out, dtype, "swiglu_forward");

    Tensor dgate = cpu_->empty({n - 1}), dup = cpu_->empty({n - 1});
    Tensor gdgate_storage = poisoned({n}, dtype), gdup_storage = poisoned({n}, dtype);
    Tensor gdgate = gdgate_storage.slice(1, n), gdup = gdup_storage.slice(1, n);
    cpu_->swiglu_backward(y_view, gate_view, up_view, dgate, dup);
    gpu_->swiglu_backward(gy_view, ggate_view, gup_view, gdgate, gdup);
    EXPECT_CLOSE(gdgate, dgate, dtype, "swiglu dgate");
    EXPECT_CLOSE(gdup, dup, dtype, "swiglu dup");

    cpu_->axpy(-0.75f, gate_view, y_view);
    gpu_->axpy(-0.75f, ggate_view, gy_view);
    EXPECT_CLOSE(gy_view, y_view, dtype, "axpy");
    cpu_->scale(y_view, 1.5f);
    gpu_->scale(gy_view, 1.5f);
    EXPECT_CLOSE(gy_view, y_view, dtype, "scale");
    Tensor exact = random({n}, DType::bf16);  // representable in both dtypes: copies are exact
    Tensor converted = poisoned({n - 1}, dtype == DType::f32 ? DType::bf16 : DType::f32);
    gpu_->copy(up(exact, dtype).slice(1, n), converted);
    EXPECT_EQ(normalised_error(down(converted), exact.slice(1, n)), 0.0) << "convert";
    // fill writes the view and nothing before it.
    Tensor filled = up(exact, dtype);
    Tensor filled_view = filled.slice(1, n);
    gpu_->fill(filled_view, 3.0f);
    EXPECT_TRUE(gpu_->all_finite(filled_view));
    Tensor back = down(filled);
    EXPECT_EQ(back.data<float>()[0], exact.data<float>()[0]) << "fill";
    for (std::int64_t i = 1; i < n; ++i) ASSERT_EQ(back.data<float>()[i], 3.0f) << "fill " << i;
  }
}

// The harness must be able to fail: a result off by one part in a hundred in one element of a
// small tensor is over the f32 bound.
TEST_F(ElementwiseOps, HarnessFlagsAWrongResult) {
  Tensor x = random({16});
  Tensor gx = up(x);
  Tensor wrong = down(gx);
  EXPECT_EQ(normalised_error(wrong, x), 0.0);
  wrong.data<float>()[3] += 0.05f;
  EXPECT_GT(normalised_error(wrong, x), tolerance(DType::f32));
  wrong.data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(normalised_error(wrong, x) < tolerance(DType::bf16));
}

// Device memory is accounted like host memory: the same allocations give the same in-use bytes
// and peak, and a released block is reused from the cache.
TEST_F(ElementwiseOps, DeviceArenaAccountsLikeTheHostArena) {
  cuda::CudaArena device;
  Arena host;
  {
    Tensor a = Tensor::empty({1000}, DType::f32, device, Device::cuda);
    Tensor b = Tensor::empty({1000}, DType::f32, host);
    {
      Tensor c = Tensor::empty({17, 3}, DType::bf16, device, Device::cuda);
      Tensor d = Tensor::empty({17, 3}, DType::bf16, host);
      EXPECT_EQ(device.bytes_in_use(), host.bytes_in_use());
    }
    EXPECT_EQ(device.bytes_in_use(), host.bytes_in_use());
    EXPECT_GT(device.cached_bytes(), 0u);
    Tensor e = Tensor::empty({17, 3}, DType::bf16, device, Device::cuda);
    EXPECT_EQ(device.cached_bytes(), 0u);  // the released block came back
  }
  EXPECT_EQ(device.bytes_in_use(), 0u);
  EXPECT_EQ(device.peak_bytes(), host.peak_bytes());
}

}  // namespace
}  // namespace metamorph::gpu_test

// Flash attention of the CUDA backend against the CPU backend: every mask kind, GQA, query
// offsets (decoding), odd sequence lengths and head sizes, rows with no allowed key; forward
// (out, lse) and backward (dq, dk, dv); and bit-identical repeats.
#include <cmath>

#include "runtime/core/error.hpp"
#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16};

struct Case {
  std::int64_t batch, sq, sk, heads, kv_heads, dim;
  AttentionMask mask;
  std::int64_t q_offset;
};

AttentionMask mask_of(MaskKind kind, std::int64_t block = 1, std::int64_t clean = 0) {
  AttentionMask m;
  m.kind = kind;
  m.block_size = block;
  m.clean_offset = clean;
  return m;
}

const Case kCases[] = {
    // Not a single key: with one allowed key p = 1 and dq = dk = 0 exactly, so both backends
    // return rounding noise there.
    {1, 2, 2, 1, 1, 8, mask_of(MaskKind::causal), 0},
    {2, 33, 33, 4, 2, 16, mask_of(MaskKind::causal), 0},
    {1, 70, 70, 2, 2, 64, mask_of(MaskKind::full), 0},
    {2, 65, 65, 3, 1, 13, mask_of(MaskKind::block_causal, 5), 0},
    {1, 64, 64, 2, 1, 128, mask_of(MaskKind::block_diffusion, 8, 32), 0},
    {1, 50, 50, 2, 2, 32, mask_of(MaskKind::block_diffusion, 4, 25), 0},
    {1, 7, 100, 4, 4, 64, mask_of(MaskKind::causal), 93},
    {1, 20, 150, 2, 1, 96, mask_of(MaskKind::block_causal, 16), 130},
    {1, 40, 30, 2, 2, 32, mask_of(MaskKind::causal), 0},
    {1, 16, 8, 1, 1, 8, mask_of(MaskKind::block_diffusion, 4, 8), 0},  // clean rows see no key
    {1, 129, 129, 2, 2, 256, mask_of(MaskKind::causal), 0},
    {2, 300, 300, 8, 2, 128, mask_of(MaskKind::causal), 0},
    // Tensor-core kernels over many double-buffered tiles: skipped, partial and whole tiles of
    // every mask kind, GQA groups of 4, rows past the last tile.
    {1, 320, 320, 4, 1, 128, mask_of(MaskKind::block_diffusion, 16, 160), 0},
    {2, 250, 250, 4, 2, 64, mask_of(MaskKind::block_diffusion, 64, 125), 0},
    {1, 200, 390, 2, 2, 64, mask_of(MaskKind::block_causal, 48), 190},
    {1, 257, 257, 8, 2, 64, mask_of(MaskKind::full), 0},
    {1, 100, 30, 2, 2, 128, mask_of(MaskKind::block_diffusion, 8, 64), 0},  // rows with no key
    // Block-diffusion training as the models run it ([x_t ; x_0], head_dim 64: the tensor-core
    // kernels): a partial last block (n = 37, B = 8), and blocks that straddle the kernels'
    // 64-row tiles (n = 130, B = 12).
    {2, 74, 74, 4, 2, 64, mask_of(MaskKind::block_diffusion, 8, 37), 0},
    {1, 260, 260, 4, 2, 64, mask_of(MaskKind::block_diffusion, 12, 130), 0},
    // Block-diffusion decoding: a finished block entering the cache with the block being
    // denoised, block-causal against 24 cached keys.
    {1, 16, 40, 4, 2, 64, mask_of(MaskKind::block_causal, 8), 24},
};

std::string describe_case(const Case& c, DType dtype) {
  return concat("b", c.batch, " sq", c.sq, " sk", c.sk, " h", c.heads, "/", c.kv_heads, " d", c.dim,
                " mask ", static_cast<int>(c.mask.kind), " block ", c.mask.block_size, " clean ",
                c.mask.clean_offset, " offset ", c.q_offset, " ", dtype_name(dtype));
}

using Attention = GpuOpTest;

TEST_F(Attention, ForwardAndBackwardOverMasksAndShapes) {
  cuda::CudaBackend fast(*device_arena_, /*deterministic=*/false);
  for (const Case& c : kCases)
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(describe_case(c, dtype));
      const Shape qs{c.batch, c.sq, c.heads, c.dim}, ks{c.batch, c.sk, c.kv_heads, c.dim};
      const Shape ls{c.batch, c.heads, c.sq};
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.dim));
      Tensor q = random(qs, dtype, -2.0f, 2.0f), k = random(ks, dtype, -2.0f, 2.0f),
             v = random(ks, dtype);
      Tensor out = cpu_->empty(qs), lse = cpu_->empty(ls);
      cpu_->attention_forward(q, k, v, c.mask, scale, out, lse, c.q_offset);
      Tensor gq = up(q, dtype), gk = up(k, dtype), gv = up(v, dtype);
      Tensor gout = poisoned(qs, dtype), glse = poisoned(ls, DType::f32);
      gpu_->attention_forward(gq, gk, gv, c.mask, scale, gout, glse, c.q_offset);
      EXPECT_CLOSE(gout, out, dtype, "attention out");
      EXPECT_CLOSE(glse, lse, DType::f32, "attention lse");

      Tensor dout = random(qs, dtype);
      Tensor dq = cpu_->empty(qs), dk = cpu_->empty(ks), dv = cpu_->empty(ks);
      cpu_->attention_backward(dout, q, k, v, out, lse, c.mask, scale, dq, dk, dv, c.q_offset);
      Tensor gdq = poisoned(qs, dtype), gdk = poisoned(ks, dtype), gdv = poisoned(ks, dtype);
      gpu_->attention_backward(up(dout, dtype), gq, gk, gv, gout, glse, c.mask, scale, gdq, gdk,
                               gdv, c.q_offset);
      EXPECT_CLOSE(gdq, dq, dtype, "attention dq");
      EXPECT_CLOSE(gdk, dk, dtype, "attention dk");
      EXPECT_CLOSE(gdv, dv, dtype, "attention dv");

      // The non-deterministic backward (dQ by float atomics inside the dk/dv kernel).
      Tensor fdq = poisoned(qs, dtype), fdk = poisoned(ks, dtype), fdv = poisoned(ks, dtype);
      fast.attention_backward(up(dout, dtype), gq, gk, gv, gout, glse, c.mask, scale, fdq, fdk, fdv,
                              c.q_offset);
      EXPECT_CLOSE(fdq, dq, dtype, "attention dq, atomics");
      EXPECT_CLOSE(fdk, dk, dtype, "attention dk, atomics");
      EXPECT_CLOSE(fdv, dv, dtype, "attention dv, atomics");
    }
}

// No atomics: the same inputs give the same bits.
TEST_F(Attention, RepeatsAreBitIdentical) {
  const Case c = kCases[11];
  const Shape qs{c.batch, c.sq, c.heads, c.dim}, ks{c.batch, c.sk, c.kv_heads, c.dim};
  const Shape ls{c.batch, c.heads, c.sq};
  Tensor gq = up(random(qs), DType::bf16), gk = up(random(ks), DType::bf16),
         gv = up(random(ks), DType::bf16), gdout = up(random(qs), DType::bf16);
  Tensor first[3], second[3];
  for (Tensor* result : {first, second}) {
    Tensor out = gpu_->empty(qs, DType::bf16), lse = gpu_->empty(ls);
    gpu_->attention_forward(gq, gk, gv, c.mask, 0.125f, out, lse, 0);
    Tensor dq = gpu_->empty(qs, DType::bf16), dk = gpu_->empty(ks, DType::bf16),
           dv = gpu_->empty(ks, DType::bf16);
    gpu_->attention_backward(gdout, gq, gk, gv, out, lse, c.mask, 0.125f, dq, dk, dv, 0);
    result[0] = down(dq);
    result[1] = down(dk);
    result[2] = down(dv);
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(normalised_error(first[i], second[i]), 0.0) << i;
}

}  // namespace
}  // namespace metamorph::gpu_test

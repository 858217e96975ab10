// Flash attention of the CUDA backend against the CPU backend: every mask kind, GQA, query
// offsets (decoding), odd sequence lengths and head sizes, rows with no allowed key; forward
// (out, lse) and backward (dq, dk, dv); and bit-identical repeats. Each runs twice: on our
// kernels alone, and with cuDNN's fused attention taking the training shapes in its scope (where
// libcudnn.so.9 loads); cuDNN's forward also feeds our backward and the other way round.
#include <cmath>
#include <cstdio>

#include "runtime/backends/cuda/cudnn_library.hpp"

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
    // Block diffusion split into cuDNN's causal parts and our kernels' remainder: one block a
    // half (no shifted part), a block longer than the half, and blocks of 64 over 256-row halves.
    {1, 32, 32, 2, 2, 64, mask_of(MaskKind::block_diffusion, 16, 16), 0},
    {1, 32, 32, 2, 2, 64, mask_of(MaskKind::block_diffusion, 24, 16), 0},
    {1, 512, 512, 4, 4, 128, mask_of(MaskKind::block_diffusion, 64, 256), 0},
};

std::string describe_case(const Case& c, DType dtype) {
  return concat("b", c.batch, " sq", c.sq, " sk", c.sk, " h", c.heads, "/", c.kv_heads, " d", c.dim,
                " mask ", static_cast<int>(c.mask.kind), " block ", c.mask.block_size, " clean ",
                c.mask.clean_offset, " offset ", c.q_offset, " ", dtype_name(dtype));
}

class Attention : public GpuOpTest {
 protected:
  // One case on `exact` (deterministic) and, for the backward, on `fast` (atomics allowed).
  void run_case(const Case& c, DType dtype, cuda::CudaBackend& exact, cuda::CudaBackend& fast);
  // Forward and backward twice on the deterministic backend, on both paths: the same bits.
  void repeat_twice(const Case& c);
};

constexpr cuda::CudnnAttentionUse kOurKernels{false, false};
constexpr cuda::CudnnAttentionUse kCudnnBoth{true, true};

const char* path_name(cuda::CudnnAttentionUse use) {
  return use.forward ? (use.backward ? "cuDNN forward and backward" : "cuDNN forward")
                     : (use.backward ? "cuDNN backward" : "our kernels");
}

// cuDNN executions a call in scope of its graphs makes (cudnn_attention.hpp): one for causal and
// full; for block diffusion in training's layout ([x_t ; x_0], cuda_block_diffusion_attention.hpp)
// one for the clean half and one for the noisy half a block behind, where the noisy half is
// longer than a block.
int cudnn_calls(const Case& c, DType dtype) {
  if (dtype != DType::bf16 || (c.dim != 64 && c.dim != 128) || c.sq != c.sk || c.q_offset != 0)
    return 0;
  if (c.mask.kind == MaskKind::causal || c.mask.kind == MaskKind::full) return 1;
  if (c.mask.kind != MaskKind::block_diffusion || c.mask.clean_offset <= 0 ||
      c.sq != 2 * c.mask.clean_offset)
    return 0;
  return c.mask.clean_offset > c.mask.block_size ? 2 : 1;
}

// Prints once why cuDNN's path is not exercised here, so a GPU log shows it.
bool cudnn_loaded() {
  const bool loaded = cuda::cudnn_library() != nullptr;
  static bool said = false;
  if (!loaded && !said) {
    std::printf("cuDNN not loaded (%s): the cuDNN runs take our kernels\n",
                cuda::cudnn_load_error().c_str());
    said = true;
  }
  return loaded;
}

TEST_F(Attention, ForwardAndBackwardOverMasksAndShapes) {
  for (cuda::CudnnAttentionUse use : {kOurKernels, kCudnnBoth}) {
    SCOPED_TRACE(path_name(use));
    cuda::CudaBackend exact(*device_arena_, /*deterministic=*/true);
    cuda::CudaBackend fast(*device_arena_, /*deterministic=*/false);
    exact.set_cudnn_attention(use);
    fast.set_cudnn_attention(use);
    for (const Case& c : kCases)
      for (DType dtype : kFloatTypes) {
        SCOPED_TRACE(describe_case(c, dtype));
        const cuda::CudnnAttentionCounts before = exact.cudnn_attention().counts();
        const cuda::CudnnAttentionCounts fast_before = fast.cudnn_attention().counts();
        run_case(c, dtype, exact, fast);
        // Where cuDNN loads, every in-scope call must have run there (a declined graph is a
        // failure here, with cuDNN's reason), and nothing else may.
        if (use.forward && cudnn_loaded()) {
          const int calls = cudnn_calls(c, dtype);
          const cuda::CudnnAttentionCounts after = exact.cudnn_attention().counts();
          const cuda::CudnnAttentionCounts fast_after = fast.cudnn_attention().counts();
          EXPECT_EQ(after.forward - before.forward, calls) << exact.cudnn_attention().last_reason();
          EXPECT_EQ(after.backward - before.backward, calls)
              << exact.cudnn_attention().last_reason();
          EXPECT_EQ(fast_after.backward - fast_before.backward, calls)
              << fast.cudnn_attention().last_reason();
        }
      }
  }
}

void Attention::run_case(const Case& c, DType dtype, cuda::CudaBackend& exact,
                         cuda::CudaBackend& fast) {
  const Shape qs{c.batch, c.sq, c.heads, c.dim}, ks{c.batch, c.sk, c.kv_heads, c.dim};
  const Shape ls{c.batch, c.heads, c.sq};
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dim));
  Tensor q = random(qs, dtype, -2.0f, 2.0f), k = random(ks, dtype, -2.0f, 2.0f),
         v = random(ks, dtype);
  Tensor out = cpu_->empty(qs), lse = cpu_->empty(ls);
  cpu_->attention_forward(q, k, v, c.mask, scale, out, lse, c.q_offset);
  Tensor gq = up(q, dtype), gk = up(k, dtype), gv = up(v, dtype);
  Tensor gout = poisoned(qs, dtype), glse = poisoned(ls, DType::f32);
  exact.attention_forward(gq, gk, gv, c.mask, scale, gout, glse, c.q_offset);
  EXPECT_CLOSE(gout, out, dtype, "attention out");
  EXPECT_CLOSE(glse, lse, DType::f32, "attention lse");

  Tensor dout = random(qs, dtype);
  Tensor dq = cpu_->empty(qs), dk = cpu_->empty(ks), dv = cpu_->empty(ks);
  cpu_->attention_backward(dout, q, k, v, out, lse, c.mask, scale, dq, dk, dv, c.q_offset);
  Tensor gdq = poisoned(qs, dtype), gdk = poisoned(ks, dtype), gdv = poisoned(ks, dtype);
  exact.attention_backward(up(dout, dtype), gq, gk, gv, gout, glse, c.mask, scale, gdq, gdk, gdv,
                           c.q_offset);
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

// No atomics: the same inputs give the same bits, on our kernels and on cuDNN's deterministic
// backward graph.
TEST_F(Attention, RepeatsAreBitIdentical) {
  for (const Case& c : {kCases[11], kCases[22]}) repeat_twice(c);
}

void Attention::repeat_twice(const Case& c) {
  SCOPED_TRACE(describe_case(c, DType::bf16));
  const Shape qs{c.batch, c.sq, c.heads, c.dim}, ks{c.batch, c.sk, c.kv_heads, c.dim};
  const Shape ls{c.batch, c.heads, c.sq};
  Tensor gq = up(random(qs), DType::bf16), gk = up(random(ks), DType::bf16),
         gv = up(random(ks), DType::bf16), gdout = up(random(qs), DType::bf16);
  for (cuda::CudnnAttentionUse use : {kOurKernels, kCudnnBoth}) {
    SCOPED_TRACE(path_name(use));
    cuda::CudaBackend gpu(*device_arena_, /*deterministic=*/true);
    gpu.set_cudnn_attention(use);
    Tensor first[3], second[3];
    for (Tensor* result : {first, second}) {
      Tensor out = gpu.empty(qs, DType::bf16), lse = gpu.empty(ls);
      gpu.attention_forward(gq, gk, gv, c.mask, 0.125f, out, lse, 0);
      Tensor dq = gpu.empty(qs, DType::bf16), dk = gpu.empty(ks, DType::bf16),
             dv = gpu.empty(ks, DType::bf16);
      gpu.attention_backward(gdout, gq, gk, gv, out, lse, c.mask, 0.125f, dq, dk, dv, 0);
      result[0] = down(dq);
      result[1] = down(dk);
      result[2] = down(dv);
    }
    for (int i = 0; i < 3; ++i) EXPECT_EQ(normalised_error(first[i], second[i]), 0.0) << i;
    if (use.backward && cudnn_loaded()) {
      EXPECT_EQ(gpu.cudnn_attention().counts().backward, 2 * cudnn_calls(c, DType::bf16))
          << gpu.cudnn_attention().last_reason();
    }
  }
}

// cuDNN's statistics are our lse: its forward feeds our backward, and our forward its backward,
// each within the usual bounds of the CPU reference (block diffusion: the merged lse of its parts).
TEST_F(Attention, CudnnAndOurKernelsShareTheLse) {
  const Case cases[] = {
      {2, 300, 300, 8, 2, 128, mask_of(MaskKind::causal), 0},
      {1, 257, 257, 8, 2, 64, mask_of(MaskKind::full), 0},
      {1, 128, 128, 4, 4, 64, mask_of(MaskKind::causal), 0},
      {1, 320, 320, 4, 2, 128, mask_of(MaskKind::block_diffusion, 16, 160), 0},
  };
  const DType dtype = DType::bf16;
  for (const Case& c : cases)
    for (cuda::CudnnAttentionUse use :
         {cuda::CudnnAttentionUse{true, false}, cuda::CudnnAttentionUse{false, true}}) {
      SCOPED_TRACE(describe_case(c, dtype));
      SCOPED_TRACE(path_name(use));
      cuda::CudaBackend gpu(*device_arena_, /*deterministic=*/true);
      gpu.set_cudnn_attention(use);
      const Shape qs{c.batch, c.sq, c.heads, c.dim}, ks{c.batch, c.sk, c.kv_heads, c.dim};
      const Shape ls{c.batch, c.heads, c.sq};
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.dim));
      Tensor q = random(qs, dtype, -2.0f, 2.0f), k = random(ks, dtype, -2.0f, 2.0f),
             v = random(ks, dtype), dout = random(qs, dtype);
      Tensor out = cpu_->empty(qs), lse = cpu_->empty(ls);
      cpu_->attention_forward(q, k, v, c.mask, scale, out, lse, 0);
      Tensor dq = cpu_->empty(qs), dk = cpu_->empty(ks), dv = cpu_->empty(ks);
      cpu_->attention_backward(dout, q, k, v, out, lse, c.mask, scale, dq, dk, dv, 0);

      Tensor gq = up(q, dtype), gk = up(k, dtype), gv = up(v, dtype);
      Tensor gout = poisoned(qs, dtype), glse = poisoned(ls, DType::f32);
      gpu.attention_forward(gq, gk, gv, c.mask, scale, gout, glse, 0);
      EXPECT_CLOSE(gout, out, dtype, "attention out");
      EXPECT_CLOSE(glse, lse, DType::f32, "attention lse");
      Tensor gdq = poisoned(qs, dtype), gdk = poisoned(ks, dtype), gdv = poisoned(ks, dtype);
      gpu.attention_backward(up(dout, dtype), gq, gk, gv, gout, glse, c.mask, scale, gdq, gdk, gdv,
                             0);
      EXPECT_CLOSE(gdq, dq, dtype, "attention dq");
      EXPECT_CLOSE(gdk, dk, dtype, "attention dk");
      EXPECT_CLOSE(gdv, dv, dtype, "attention dv");
      if (cudnn_loaded()) {
        const cuda::CudnnAttentionCounts n = gpu.cudnn_attention().counts();
        const int calls = cudnn_calls(c, dtype);
        EXPECT_EQ(n.forward, use.forward ? calls : 0) << gpu.cudnn_attention().last_reason();
        EXPECT_EQ(n.backward, use.backward ? calls : 0) << gpu.cudnn_attention().last_reason();
      }
    }
}

}  // namespace
}  // namespace metamorph::gpu_test

// RMSNorm, RoPE (every kernel variant) and the embedding lookups (whole and vocabulary-sharded)
// of the CUDA backend.
#include <cstring>

#include "runtime/backends/cuda/cuda_kernel_variants.hpp"
#include "runtime/core/error.hpp"
#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16};

using NormRopeEmbedding = GpuOpTest;

TEST_F(NormRopeEmbedding, RmsNormForwardAndBackward) {
  // No width-1 rows: there dx = dy w rstd eps / (x^2 + eps) is pure cancellation, and both
  // backends return rounding noise that no relative bound can compare.
  // Every kernel of cuda_kernel_variants.hpp. The rows kernels' register layout with 16-byte runs
  // (n a multiple of 8 bf16 / 4 f32: one warp per row up to 2048, several warps for 2056 and 4096,
  // several 64-row chunks of the fused dw sums for 130 and 257 rows), with one-element runs
  // (odd n), and the block-per-row kernels for rows too long for the registers (17000, 16999).
  // The warp kernels: widths 1000 (lanes without a run), 2048, 2056 and 4096 (16 runs per lane;
  // the f32 backward falls back to rows there except with warp_pair and warp_quad), and more rows
  // than the device holds warps (5003, 20011, 3001: a warp or a warp group walks several rows,
  // prefetched in turn); the odd widths fall back to rows. warp_pair: a pair's second warp with
  // fewer runs than its first (1000; 2056: one run), and one warp for 128 and 256 (one run per
  // lane). warp_quad: a quad's last warp with fewer runs (1000) or its last two with one run and
  // none (2056), one warp for 128 and 256.
  const Shape shapes[] = {{1, 3},       {5, 7},       {64, 128},   {3, 1000},
                          {2, 3, 4096}, {257, 33},    {130, 2048}, {67, 2056},
                          {70, 2047},   {3, 17000},   {2, 16999},  {130, 4096},
                          {5003, 2048}, {20011, 256}, {37, 1000},  {3001, 4096}};
  for (const Shape& shape : shapes)
    for (DType dtype : kFloatTypes) {
      const std::int64_t n = shape.back(), rows = shape_numel(shape) / n;
      Tensor x = random(shape, dtype, -2.0f, 2.0f), w = random({n}, DType::f32, 0.5f, 1.5f);
      Tensor y = cpu_->empty(shape), rstd = cpu_->empty({rows});
      cpu_->rmsnorm_forward(x, w, 1e-5f, y, rstd);
      Tensor dy = random(shape, dtype), dx = cpu_->empty(shape), dw = random({n});
      Tensor dw_start = cpu_->empty({n});
      cpu_->copy(dw, dw_start);
      cpu_->rmsnorm_backward(dy, x, w, rstd, dx, dw);
      Tensor gx = up(x, dtype), gw = up(w);
      for (cuda::RmsNormKernel kernel : cuda::kRmsNormKernels) {
        SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype) + " " + cuda::kernel_name(kernel));
        Tensor gy = poisoned(shape, dtype), grstd = poisoned({rows}, DType::f32);
        cuda::rmsnorm_forward_with(kernel, *gpu_, gx, gw, 1e-5f, gy, grstd);
        EXPECT_CLOSE(gy, y, dtype, "rmsnorm y");
        EXPECT_CLOSE(grstd, rstd, DType::f32, "rmsnorm rstd");
        Tensor gdx = poisoned(shape, dtype), gdw = up(dw_start);  // dw accumulates
        cuda::rmsnorm_backward_with(kernel, *gpu_, up(dy, dtype), gx, gw, grstd, gdx, gdw);
        EXPECT_CLOSE(gdx, dx, dtype, "rmsnorm dx");
        EXPECT_CLOSE(gdw, dw, DType::f32, "rmsnorm dw");
        // In place: dx is dy.
        Tensor gdy = up(dy, dtype), gdw2 = up(dw_start);
        cuda::rmsnorm_backward_with(kernel, *gpu_, gdy, gx, gw, grstd, gdy, gdw2);
        EXPECT_CLOSE(gdy, dx, dtype, "rmsnorm dx in place");
        EXPECT_CLOSE(gdw2, dw, DType::f32, "rmsnorm dw in place");
      }
      // The backend's own entry points (the default kernels).
      SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype) + " backend");
      Tensor gy = poisoned(shape, dtype), grstd = poisoned({rows}, DType::f32);
      gpu_->rmsnorm_forward(gx, gw, 1e-5f, gy, grstd);
      EXPECT_CLOSE(gy, y, dtype, "rmsnorm y");
      Tensor gdx = poisoned(shape, dtype), gdw = up(dw_start);
      gpu_->rmsnorm_backward(up(dy, dtype), gx, gw, grstd, gdx, gdw);
      EXPECT_CLOSE(gdx, dx, dtype, "rmsnorm dx");
      EXPECT_CLOSE(gdw, dw, DType::f32, "rmsnorm dw");
    }
}

TEST_F(NormRopeEmbedding, RopeForwardAndInverse) {
  // Every kernel of cuda_kernel_variants.hpp. 16-byte runs where half the head dim is a multiple
  // of 8 (bf16) or 4 (f32); one pair at a time for the others (half 1, 5, 12 in bf16), which the
  // fused kernel leaves to the table. Fused: half 48 (6 runs per half), short sequences whose
  // batch rows split into one item each (seq 5, 33), long ones where an item holds several batch
  // rows (seq 4000 over 5 rows: groups of 2, 2, 1; seq 8200), and 20 heads x 128 (two rounds of
  // loads per lane).
  const Shape shapes[] = {{1, 1, 1, 2},     {2, 5, 3, 8},    {1, 33, 4, 64}, {2, 17, 2, 128},
                          {1, 7, 3, 10},    {2, 9, 2, 24},   {3, 5, 7, 96},  {4, 64, 20, 128},
                          {5, 4000, 1, 16}, {2, 8200, 2, 32}};
  for (const Shape& shape : shapes)
    for (DType dtype : kFloatTypes)
      for (std::int32_t start : {0, 3000}) {
        Tensor positions = Tensor::empty({shape[1]}, DType::i32, host_arena_);
        for (std::int64_t s = 0; s < shape[1]; ++s)
          positions.data<std::int32_t>()[s] = start + static_cast<std::int32_t>(3 * s);
        Tensor gpositions = up(positions);
        for (bool inverse : {false, true}) {
          Tensor x = random(shape, dtype);
          Tensor expected = cpu_->empty(shape);
          cpu_->copy(x, expected);
          cpu_->rope(expected, positions, 10000.0f, inverse);
          for (cuda::RopeKernel kernel : cuda::kRopeKernels) {
            SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype) + " from " +
                         std::to_string(start) + " " + cuda::kernel_name(kernel));
            Tensor gx = up(x, dtype);
            cuda::rope_with(kernel, *gpu_, gx, gpositions, 10000.0f, inverse);
            EXPECT_CLOSE(gx, expected, dtype, inverse ? "rope inverse" : "rope");
          }
          SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype) + " backend");
          Tensor gx = up(x, dtype);
          gpu_->rope(gx, gpositions, 10000.0f, inverse);
          EXPECT_CLOSE(gx, expected, dtype, inverse ? "rope inverse" : "rope");
        }
      }
}

// q and k in one pass: the bits of rope on each alone, for GQA head counts (k with fewer heads),
// one-pair runs (half 5), 16-byte runs, and a k whose data starts off a
// 16-byte boundary (the launch falls back to one-pair runs for both); a k of another seq, head_dim
// or dtype is refused.
TEST_F(NormRopeEmbedding, RopeOfQAndKInOnePassEqualsRopeOfEach) {
  auto same_bits = [](const Tensor& a, const Tensor& b) {
    return a.bytes() == b.bytes() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
  };
  struct Case {
    Shape q, k;
    std::int64_t k_offset;  // elements of k's buffer before k's data
  };
  const Case cases[] = {{{2, 64, 8, 128}, {2, 64, 2, 128}, 0},
                        {{1, 33, 4, 64}, {1, 33, 4, 64}, 0},
                        {{2, 9, 3, 10}, {2, 9, 1, 10}, 0},
                        {{1, 40, 6, 64}, {1, 40, 2, 64}, 3},
                        {{2, 4096, 32, 64}, {2, 4096, 4, 64}, 0}};
  for (const Case& c : cases)
    for (DType dtype : kFloatTypes)
      for (bool inverse : {false, true}) {
        SCOPED_TRACE(describe(c.q) + " k " + describe(c.k) + " +" + std::to_string(c.k_offset) +
                     " " + dtype_name(dtype) + (inverse ? " inverse" : ""));
        Tensor positions = Tensor::empty({c.q[1]}, DType::i32, host_arena_);
        for (std::int64_t s = 0; s < c.q[1]; ++s)
          positions.data<std::int32_t>()[s] = 7 + static_cast<std::int32_t>(2 * s);
        const Tensor gpositions = up(positions);
        const Tensor q = random(c.q, dtype), k = random(c.k, dtype);
        std::int64_t k_elements = 1;
        for (std::int64_t d : c.k) k_elements *= d;
        Tensor separate_q = up(q, dtype), separate_k = up(k, dtype);
        gpu_->rope(separate_q, gpositions, 10000.0f, inverse);
        gpu_->rope(separate_k, gpositions, 10000.0f, inverse);
        Tensor paired_q = up(q, dtype);
        Tensor k_buffer = gpu_->empty({c.k_offset + k_elements}, dtype);
        Tensor paired_k = k_buffer.slice(c.k_offset, c.k_offset + k_elements).view(c.k);
        gpu_->copy(up(k, dtype), paired_k);
        gpu_->rope_qk(paired_q, paired_k, gpositions, 10000.0f, inverse);
        EXPECT_TRUE(same_bits(down(paired_q), down(separate_q)));
        EXPECT_TRUE(same_bits(down(paired_k), down(separate_k)));
      }
  Tensor gq = up(random({1, 8, 2, 16}, DType::bf16), DType::bf16);
  const Tensor gpositions = gpu_->zeros({8}, DType::i32);
  for (const Shape& bad : {Shape{1, 9, 2, 16}, Shape{1, 8, 2, 8}, Shape{2, 8, 2, 16}}) {
    Tensor gk = up(random(bad, DType::bf16), DType::bf16);
    EXPECT_THROW(gpu_->rope_qk(gq, gk, gpositions, 10000.0f, false), std::exception)
        << describe(bad);
  }
  Tensor gk32 = up(random({1, 8, 2, 16}, DType::f32));
  EXPECT_THROW(gpu_->rope_qk(gq, gk32, gpositions, 10000.0f, false), std::exception);
}

// The backward's default: bulk copies only where one warp cannot prefetch a bf16 row.
TEST_F(NormRopeEmbedding, RmsNormBackwardDefaultsToBulkCopiesForLongBf16Rows) {
  using cuda::RmsNormKernel;
  EXPECT_EQ(cuda::default_rmsnorm_backward(2048, DType::bf16), RmsNormKernel::warp_prefetch);
  EXPECT_EQ(cuda::default_rmsnorm_backward(2056, DType::bf16), RmsNormKernel::bulk);
  EXPECT_EQ(cuda::default_rmsnorm_backward(4096, DType::bf16), RmsNormKernel::bulk);
  EXPECT_EQ(cuda::default_rmsnorm_backward(4104, DType::bf16), RmsNormKernel::warp_prefetch);
  EXPECT_EQ(cuda::default_rmsnorm_backward(4096, DType::f32), RmsNormKernel::warp_prefetch);
}

// The same bits on every run: no atomics, fixed reduction orders (the fused dw column sums over
// several row chunks and row groups, or over the warps and blocks, included), for every kernel.
TEST_F(NormRopeEmbedding, RepeatsAreBitIdentical) {
  auto same_bits = [](const Tensor& a, const Tensor& b) {
    return a.bytes() == b.bytes() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
  };
  const Shape norm_shapes[] = {{300, 2056}, {300, 2047}, {6007, 2048}, {2001, 4096}};
  for (const Shape& shape : norm_shapes)
    for (cuda::RmsNormKernel kernel : cuda::kRmsNormKernels) {
      const std::int64_t n = shape[1];
      SCOPED_TRACE(describe(shape) + " " + cuda::kernel_name(kernel));
      Tensor gx = up(random(shape, DType::bf16, -2.0f, 2.0f), DType::bf16);
      Tensor gdy = up(random(shape, DType::bf16), DType::bf16);
      Tensor gw = up(random({n}, DType::f32, 0.5f, 1.5f));
      Tensor results[2][4];
      for (Tensor* result : results) {
        Tensor y = gpu_->empty(shape, DType::bf16), rstd = gpu_->empty({shape[0]});
        Tensor dx = gpu_->empty(shape, DType::bf16), dw = gpu_->zeros({n});
        cuda::rmsnorm_forward_with(kernel, *gpu_, gx, gw, 1e-5f, y, rstd);
        cuda::rmsnorm_backward_with(kernel, *gpu_, gdy, gx, gw, rstd, dx, dw);
        result[0] = down(y);
        result[1] = down(rstd);
        result[2] = down(dx);
        result[3] = down(dw);
      }
      for (int i = 0; i < 4; ++i) EXPECT_TRUE(same_bits(results[0][i], results[1][i])) << i;
    }
  const Shape rope_shape{2, 64, 4, 128};
  Tensor x = random(rope_shape, DType::bf16);
  Tensor positions = Tensor::empty({rope_shape[1]}, DType::i32, host_arena_);
  for (std::int64_t s = 0; s < rope_shape[1]; ++s)
    positions.data<std::int32_t>()[s] = 1000 + static_cast<std::int32_t>(s);
  for (cuda::RopeKernel kernel : cuda::kRopeKernels) {
    Tensor rotated[2];
    for (Tensor& result : rotated) {
      Tensor gx = up(x, DType::bf16);
      cuda::rope_with(kernel, *gpu_, gx, up(positions), 10000.0f, false);
      result = down(gx);
    }
    EXPECT_TRUE(same_bits(rotated[0], rotated[1])) << cuda::kernel_name(kernel);
  }
}

TEST_F(NormRopeEmbedding, EmbeddingForwardAndBackward) {
  struct Case {
    std::int64_t vocab, hidden, tokens;
  };
  const Case cases[] = {{1, 1, 1}, {50, 8, 13}, {1000, 67, 300}, {7, 256, 1000}};
  for (const Case& c : cases)
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(concat("vocab ", c.vocab, " hidden ", c.hidden, " tokens ", c.tokens, " ",
                          dtype_name(dtype)));
      Tensor table = random({c.vocab, c.hidden}, dtype);
      Tensor ids = random_ids(c.tokens, 0, static_cast<std::int32_t>(c.vocab));  // repeats ids
      Tensor out = cpu_->empty({c.tokens, c.hidden});
      Tensor gout = poisoned({c.tokens, c.hidden}, dtype);
      Tensor gids = up(ids);
      cpu_->embedding_forward(table, ids, out);
      gpu_->embedding_forward(up(table, dtype), gids, gout);
      EXPECT_CLOSE(gout, out, dtype, "embedding_forward");
      Tensor dout = random({c.tokens, c.hidden}, dtype), dtable = random({c.vocab, c.hidden});
      Tensor gdtable = up(dtable);
      cpu_->embedding_backward(ids, dout, dtable);
      gpu_->embedding_backward(gids, up(dout, dtype), gdtable);
      EXPECT_CLOSE(gdtable, dtable, DType::f32, "embedding_backward");
      // Each row's tokens are added in token order, as the CPU's loop adds them: the same bits.
      const Tensor host_dtable = down(gdtable);
      EXPECT_EQ(std::memcmp(host_dtable.raw(), dtable.raw(), dtable.bytes()), 0)
          << "embedding_backward: not the CPU's additions in the CPU's order";

      // Two vocabulary shards: [0, split) and [split, vocab).
      const std::int64_t split = c.vocab / 2;
      for (auto [begin, end] : {std::pair{std::int64_t{0}, split}, std::pair{split, c.vocab}}) {
        if (end == begin) continue;
        Tensor shard = table.slice(begin, end);
        Tensor sout = cpu_->empty({c.tokens, c.hidden});
        Tensor gsout = poisoned({c.tokens, c.hidden}, dtype);
        cpu_->embedding_forward_sharded(shard, ids, begin, sout);
        gpu_->embedding_forward_sharded(up(shard, dtype), gids, begin, gsout);
        EXPECT_CLOSE(gsout, sout, dtype, "embedding_forward_sharded");
        Tensor sd = random({end - begin, c.hidden});
        Tensor gsd = up(sd);
        cpu_->embedding_backward_sharded(ids, dout, begin, sd);
        gpu_->embedding_backward_sharded(gids, up(dout, dtype), begin, gsd);
        EXPECT_CLOSE(gsd, sd, DType::f32, "embedding_backward_sharded");
      }
    }
}

TEST_F(NormRopeEmbedding, EmbeddingRejectsTokenIdsOutsideTheVocabulary) {
  Tensor table = up(random({4, 2})), out = gpu_->empty({3, 2}), dtable = gpu_->zeros({4, 2});
  Tensor dout = up(random({3, 2}));  // non-zero: a premature add would show
  for (std::int32_t bad : {-1, 4}) {
    Tensor ids = Tensor::empty({3}, DType::i32, host_arena_);
    ids.data<std::int32_t>()[0] = 1;
    ids.data<std::int32_t>()[1] = bad;
    ids.data<std::int32_t>()[2] = 2;
    try {
      gpu_->embedding_forward(table, up(ids), out);
      ADD_FAILURE() << "id " << bad << " accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("token id " + std::to_string(bad) + " at position 1"),
                std::string::npos)
          << e.what();
    }
    // The backward checks before it adds: the gradient is untouched.
    const Tensor before = down(dtable);
    EXPECT_THROW(gpu_->embedding_backward(up(ids), dout, dtable), InputError);
    const Tensor after = down(dtable);
    for (std::int64_t i = 0; i < after.numel(); ++i)
      EXPECT_EQ(after.data<float>()[i], before.data<float>()[i]) << "element " << i;
    // The check's result does not carry over to the next call.
    ids.data<std::int32_t>()[1] = 3;
    EXPECT_NO_THROW(gpu_->embedding_forward(table, up(ids), out));
    EXPECT_NO_THROW(gpu_->embedding_backward(up(ids), dout, dtable));
  }
}

}  // namespace
}  // namespace metamorph::gpu_test

// RMSNorm, RoPE and the embedding lookups (whole and vocabulary-sharded) of the CUDA backend.
#include "runtime/core/error.hpp"
#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16};

using NormRopeEmbedding = GpuOpTest;

TEST_F(NormRopeEmbedding, RmsNormForwardAndBackward) {
  // No width-1 rows: there dx = dy w rstd eps / (x^2 + eps) is pure cancellation, and both
  // backends return rounding noise that no relative bound can compare.
  const Shape shapes[] = {{1, 3}, {5, 7}, {64, 128}, {3, 1000}, {2, 3, 4096}, {257, 33}};
  for (const Shape& shape : shapes)
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype));
      const std::int64_t n = shape.back(), rows = shape_numel(shape) / n;
      Tensor x = random(shape, dtype, -2.0f, 2.0f), w = random({n}, DType::f32, 0.5f, 1.5f);
      Tensor y = cpu_->empty(shape), rstd = cpu_->empty({rows});
      Tensor gx = up(x, dtype), gw = up(w), gy = poisoned(shape, dtype),
             grstd = poisoned({rows}, DType::f32);
      cpu_->rmsnorm_forward(x, w, 1e-5f, y, rstd);
      gpu_->rmsnorm_forward(gx, gw, 1e-5f, gy, grstd);
      EXPECT_CLOSE(gy, y, dtype, "rmsnorm y");
      EXPECT_CLOSE(grstd, rstd, DType::f32, "rmsnorm rstd");
      Tensor dy = random(shape, dtype), dx = cpu_->empty(shape), dw = random({n});
      Tensor gdx = poisoned(shape, dtype), gdw = up(dw);  // dw accumulates
      cpu_->rmsnorm_backward(dy, x, w, rstd, dx, dw);
      gpu_->rmsnorm_backward(up(dy, dtype), gx, gw, grstd, gdx, gdw);
      EXPECT_CLOSE(gdx, dx, dtype, "rmsnorm dx");
      EXPECT_CLOSE(gdw, dw, DType::f32, "rmsnorm dw");
      // In place: dx is dy.
      Tensor gdy = up(dy, dtype);
      gpu_->rmsnorm_backward(gdy, gx, gw, grstd, gdy, gdw);
      EXPECT_CLOSE(gdy, dx, dtype, "rmsnorm dx in place");
    }
}

TEST_F(NormRopeEmbedding, RopeForwardAndInverse) {
  const Shape shapes[] = {{1, 1, 1, 2}, {2, 5, 3, 8}, {1, 33, 4, 64}, {2, 17, 2, 128}};
  for (const Shape& shape : shapes)
    for (DType dtype : kFloatTypes)
      for (std::int32_t start : {0, 3000}) {
        SCOPED_TRACE(describe(shape) + " " + dtype_name(dtype) + " from " + std::to_string(start));
        Tensor positions = Tensor::empty({shape[1]}, DType::i32, host_arena_);
        for (std::int64_t s = 0; s < shape[1]; ++s)
          positions.data<std::int32_t>()[s] = start + static_cast<std::int32_t>(3 * s);
        for (bool inverse : {false, true}) {
          Tensor x = random(shape, dtype);
          Tensor gx = up(x, dtype);
          cpu_->rope(x, positions, 10000.0f, inverse);
          gpu_->rope(gx, up(positions), 10000.0f, inverse);
          EXPECT_CLOSE(gx, x, dtype, inverse ? "rope inverse" : "rope");
        }
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
  Tensor dout = gpu_->zeros({3, 2});
  for (std::int32_t bad : {-1, 4}) {
    Tensor ids = Tensor::empty({3}, DType::i32, host_arena_);
    ids.data<std::int32_t>()[0] = 1;
    ids.data<std::int32_t>()[1] = bad;
    ids.data<std::int32_t>()[2] = 2;
    EXPECT_THROW(gpu_->embedding_forward(table, up(ids), out), InputError);
    EXPECT_THROW(gpu_->embedding_backward(up(ids), dout, dtable), InputError);
  }
}

}  // namespace
}  // namespace metamorph::gpu_test

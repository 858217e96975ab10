// Softmax cross-entropy of the CUDA backend: plain, weighted, in place, and the
// vocabulary-parallel sequence (row_max, stats, finish, sharded backward) over two shards.
#include <algorithm>
#include <cmath>

#include "runtime/core/error.hpp"
#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16};
constexpr std::int32_t kIgnore = -100;

struct Case {
  std::int64_t tokens, vocab;
};
const Case kCases[] = {{1, 1}, {7, 2}, {64, 1000}, {5, 32003}, {33, 4097}, {3, 32000}};

using CrossEntropy = GpuOpTest;

Tensor targets_with_ignored(GpuOpTest& t, Tensor ids) {
  for (std::int64_t r = 0; r < ids.numel(); r += 3) ids.data<std::int32_t>()[r] = kIgnore;
  (void)t;
  return ids;
}

bool close(double got, double want, double tol) {
  return std::abs(got - want) <= tol * std::max(1.0, std::abs(want));
}

TEST_F(CrossEntropy, ForwardAndBackward) {
  for (const Case& c : kCases)
    for (DType dtype : kFloatTypes)
      for (bool weighted : {false, true}) {
        SCOPED_TRACE(
            concat(c.tokens, "x", c.vocab, " ", dtype_name(dtype), weighted ? " weighted" : ""));
        Tensor logits = random({c.tokens, c.vocab}, dtype, -8.0f, 8.0f);
        Tensor targets = targets_with_ignored(
            *this, random_ids(c.tokens, 0, static_cast<std::int32_t>(c.vocab)));
        Tensor weights = random({c.tokens}, DType::f32, 0.1f, 2.0f);
        Tensor lse = cpu_->empty({c.tokens});
        Tensor glogits = up(logits, dtype), gtargets = up(targets), gweights = up(weights);
        Tensor glse = poisoned({c.tokens}, DType::f32);
        const double want =
            weighted ? cpu_->weighted_cross_entropy_forward(logits, targets, weights, kIgnore, lse)
                     : cpu_->cross_entropy_forward(logits, targets, kIgnore, lse);
        const double got = weighted ? gpu_->weighted_cross_entropy_forward(glogits, gtargets,
                                                                           gweights, kIgnore, glse)
                                    : gpu_->cross_entropy_forward(glogits, gtargets, kIgnore, glse);
        EXPECT_TRUE(close(got, want, 1e-5)) << got << " vs " << want;
        EXPECT_CLOSE(glse, lse, DType::f32, "lse");

        Tensor dlogits = cpu_->empty({c.tokens, c.vocab});
        if (weighted)
          cpu_->weighted_cross_entropy_backward(logits, targets, lse, weights, kIgnore, 0.25f,
                                                dlogits);
        else
          cpu_->cross_entropy_backward(logits, targets, lse, kIgnore, 0.25f, dlogits);
        for (DType dtype_out : kFloatTypes) {
          Tensor gd = poisoned({c.tokens, c.vocab}, dtype_out);
          if (weighted)
            gpu_->weighted_cross_entropy_backward(glogits, gtargets, glse, gweights, kIgnore, 0.25f,
                                                  gd);
          else
            gpu_->cross_entropy_backward(glogits, gtargets, glse, kIgnore, 0.25f, gd);
          EXPECT_CLOSE(gd, dlogits, dtype_out, "dlogits");
        }
        // In place: dlogits is logits.
        Tensor inplace = up(logits, dtype);
        if (weighted)
          gpu_->weighted_cross_entropy_backward(inplace, gtargets, glse, gweights, kIgnore, 0.25f,
                                                inplace);
        else
          gpu_->cross_entropy_backward(inplace, gtargets, glse, kIgnore, 0.25f, inplace);
        EXPECT_CLOSE(inplace, dlogits, dtype, "dlogits in place");
      }
}

// The vocabulary-parallel sequence, plain and with per-row weights (block diffusion under tensor
// parallelism). The shards split as models/tensor_parallel.hpp's vocab_shard does: ceil(V / 2)
// columns on the first, the rest (one fewer for odd V) on the second.
TEST_F(CrossEntropy, VocabularyParallelOverTwoShards) {
  for (const Case& c : kCases)
    for (DType dtype : kFloatTypes)
      for (bool weighted : {false, true}) {
        if (c.vocab < 2) continue;
        SCOPED_TRACE(
            concat(c.tokens, "x", c.vocab, " ", dtype_name(dtype), weighted ? " weighted" : ""));
        Tensor logits = random({c.tokens, c.vocab}, dtype, -8.0f, 8.0f);
        Tensor targets = targets_with_ignored(
            *this, random_ids(c.tokens, 0, static_cast<std::int32_t>(c.vocab)));
        // Block diffusion's weights are 1/t, t in [1e-3, 1]: from 1 up to 1000.
        Tensor weights = random({c.tokens}, DType::f32, 1.0f, 1000.0f);
        // Rows that carry no loss there have weight 0 (and the ignore index); a counted row
        // with weight 0 must give a zero gradient too.
        if (c.tokens > 1) weights.data<float>()[1] = 0.0f;
        Tensor gtargets = up(targets), gweights = up(weights);
        const std::int64_t split = (c.vocab + 1) / 2;
        const std::int64_t bounds[3] = {0, split, c.vocab};
        // Each shard's logits: the columns [bounds[s], bounds[s+1]).
        Tensor shards[2], gshards[2];
        for (int s = 0; s < 2; ++s) {
          const std::int64_t w = bounds[s + 1] - bounds[s];
          shards[s] = cpu_->empty({c.tokens, w});
          for (std::int64_t r = 0; r < c.tokens; ++r)
            for (std::int64_t j = 0; j < w; ++j)
              shards[s].data<float>()[r * w + j] =
                  logits.data<float>()[r * c.vocab + bounds[s] + j];
          gshards[s] = up(shards[s], dtype);
        }
        // Global max over both shards (the caller's all-reduce, done here on the host).
        Tensor max = cpu_->empty({c.tokens});
        for (std::int64_t r = 0; r < c.tokens; ++r) max.data<float>()[r] = -INFINITY;
        for (int s = 0; s < 2; ++s) {
          Tensor m = cpu_->empty({c.tokens}), gm = poisoned({c.tokens}, DType::f32);
          cpu_->row_max(shards[s], m);
          gpu_->row_max(gshards[s], gm);
          EXPECT_CLOSE(gm, m, DType::f32, "row_max");
          for (std::int64_t r = 0; r < c.tokens; ++r)
            max.data<float>()[r] = std::max(max.data<float>()[r], m.data<float>()[r]);
        }
        Tensor gmax = up(max);
        Tensor sum = cpu_->zeros({c.tokens}), target = cpu_->zeros({c.tokens});
        for (int s = 0; s < 2; ++s) {
          Tensor se = cpu_->empty({c.tokens}), tl = cpu_->empty({c.tokens});
          Tensor gse = poisoned({c.tokens}, DType::f32), gtl = poisoned({c.tokens}, DType::f32);
          cpu_->cross_entropy_stats(shards[s], targets, bounds[s], max, se, tl);
          gpu_->cross_entropy_stats(gshards[s], gtargets, bounds[s], gmax, gse, gtl);
          EXPECT_CLOSE(gse, se, DType::f32, "sum_exp");
          EXPECT_CLOSE(gtl, tl, DType::f32, "target_logit");
          cpu_->axpy(1.0f, se, sum);
          cpu_->axpy(1.0f, tl, target);
        }
        // finish on the same (CPU-summed) statistics on both sides: only the op differs.
        Tensor lse = cpu_->empty({c.tokens}), glse = poisoned({c.tokens}, DType::f32);
        const double want =
            weighted ? cpu_->weighted_cross_entropy_finish(max, sum, target, targets, weights,
                                                           kIgnore, lse)
                     : cpu_->cross_entropy_finish(max, sum, target, targets, kIgnore, lse);
        const double got =
            weighted
                ? gpu_->weighted_cross_entropy_finish(gmax, up(sum), up(target), gtargets, gweights,
                                                      kIgnore, glse)
                : gpu_->cross_entropy_finish(gmax, up(sum), up(target), gtargets, kIgnore, glse);
        EXPECT_TRUE(close(got, want, 1e-6)) << got << " vs " << want;
        EXPECT_CLOSE(glse, lse, DType::f32, "finish lse");
        for (int s = 0; s < 2; ++s) {
          Tensor d = cpu_->empty(shards[s].shape());
          if (weighted)
            cpu_->weighted_cross_entropy_backward_sharded(shards[s], targets, lse, weights, kIgnore,
                                                          bounds[s], 0.5f, d);
          else
            cpu_->cross_entropy_backward_sharded(shards[s], targets, lse, kIgnore, bounds[s], 0.5f,
                                                 d);
          for (DType dtype_out : kFloatTypes) {
            Tensor gd = poisoned(shards[s].shape(), dtype_out);
            if (weighted)
              gpu_->weighted_cross_entropy_backward_sharded(gshards[s], gtargets, glse, gweights,
                                                            kIgnore, bounds[s], 0.5f, gd);
            else
              gpu_->cross_entropy_backward_sharded(gshards[s], gtargets, glse, kIgnore, bounds[s],
                                                   0.5f, gd);
            EXPECT_CLOSE(gd, d, dtype_out, "sharded dlogits");
          }
          // In place, as the model runs it: dlogits is the shard's logits buffer.
          Tensor inplace = up(shards[s], dtype);
          if (weighted)
            gpu_->weighted_cross_entropy_backward_sharded(inplace, gtargets, glse, gweights,
                                                          kIgnore, bounds[s], 0.5f, inplace);
          else
            gpu_->cross_entropy_backward_sharded(inplace, gtargets, glse, kIgnore, bounds[s], 0.5f,
                                                 inplace);
          EXPECT_CLOSE(inplace, d, dtype, "sharded dlogits in place");
        }
      }
}

TEST_F(CrossEntropy, RejectsTargetsOutsideTheVocabulary) {
  Tensor logits = up(random({3, 5})), lse = gpu_->empty({3});
  Tensor targets = Tensor::empty({3}, DType::i32, host_arena_);
  targets.data<std::int32_t>()[0] = kIgnore;
  targets.data<std::int32_t>()[1] = 5;
  targets.data<std::int32_t>()[2] = 0;
  try {
    gpu_->cross_entropy_forward(logits, up(targets), kIgnore, lse);
    ADD_FAILURE() << "target 5 of a vocabulary of 5 accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("target id 5 at token 1"), std::string::npos) << e.what();
  }
  Tensor dlogits = gpu_->empty({3, 5});
  EXPECT_THROW(gpu_->cross_entropy_backward(logits, up(targets), lse, kIgnore, 1.0f, dlogits),
               InputError);
  // The check's result does not carry over: the same op on valid targets passes.
  targets.data<std::int32_t>()[1] = 4;
  EXPECT_NO_THROW(gpu_->cross_entropy_forward(logits, up(targets), kIgnore, lse));
  EXPECT_NO_THROW(gpu_->cross_entropy_backward(logits, up(targets), lse, kIgnore, 1.0f, dlogits));
}

}  // namespace
}  // namespace metamorph::gpu_test

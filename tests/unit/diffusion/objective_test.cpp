// The block-diffusion objective: the [x_t ; x_0] mask against a block-by-block construction,
// the weighted cross-entropy against PyTorch, the one-pass loss and gradients against a naive
// forward per block, B = 1 with logit shift against AR training, and the batch layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/backends/cpu/attention_key_ranges.hpp"
#include "runtime/diffusion/diffusion_objective.hpp"
#include "runtime/diffusion/mask_token.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/diffusion/diffusion_test_model.hpp"

namespace metamorph::diffusion {
namespace {

using test::normalised_error;

// Dense [2n, 2n] pattern built block pair by block pair: noisy block a sees noisy block a and
// clean blocks c < a; clean block a sees clean blocks c <= a.
std::vector<std::vector<bool>> brute_force_pattern(std::int64_t n, std::int64_t block) {
  std::vector<std::vector<bool>> allowed(2 * n, std::vector<bool>(2 * n, false));
  const std::int64_t blocks = (n + block - 1) / block;
  auto fill = [&](std::int64_t q_begin, std::int64_t qa, std::int64_t k_begin, std::int64_t kc) {
    for (std::int64_t q = qa * block; q < std::min(n, (qa + 1) * block); ++q)
      for (std::int64_t k = kc * block; k < std::min(n, (kc + 1) * block); ++k)
        allowed[q_begin + q][k_begin + k] = true;
  };
  for (std::int64_t a = 0; a < blocks; ++a)
    for (std::int64_t c = 0; c < blocks; ++c) {
      if (c == a) fill(0, a, 0, c);
      if (c < a) fill(0, a, n, c);
      if (c <= a) fill(n, a, n, c);
    }
  return allowed;
}

TEST(BlockDiffusionMask, MatchesBlockByBlockConstructionAndKernelRanges) {
  for (std::int64_t n : {1, 4, 7, 12, 13})
    for (std::int64_t block : {1, 2, 3, 4, 8}) {
      const auto expected = brute_force_pattern(n, block);
      const AttentionMask mask{MaskKind::block_diffusion, block, n};
      for (std::int64_t q = 0; q < 2 * n; ++q) {
        const AllowedKeys ranges = allowed_keys(mask, q, 2 * n);
        for (std::int64_t k = 0; k < 2 * n; ++k) {
          ASSERT_EQ(mask.allows(q, k), expected[q][k])
              << "n " << n << " B " << block << " q " << q << " k " << k;
          ASSERT_EQ(ranges.first.contains(k) || ranges.second.contains(k), expected[q][k])
              << "kernel ranges, n " << n << " B " << block << " q " << q << " k " << k;
        }
      }
    }
}

void write_raw(const std::filesystem::path& path, const void* data, std::size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

TEST(WeightedCrossEntropy, WholeAndVocabularyShardsMatchPyTorch) {
  Arena arena;
  CpuBackend cpu(arena);
  const std::int64_t tokens = 9, vocab = 11;
  Tensor logits = cpu.empty({tokens, vocab}), lse = cpu.empty({tokens});
  Tensor targets = cpu.empty({tokens}, DType::i32), weights = cpu.empty({tokens});
  const rng::Stream s(4, "test.ce");
  for (std::int64_t i = 0; i < logits.numel(); ++i)
    logits.data<float>()[i] = 3.0f * s.normal(static_cast<std::uint64_t>(i));
  for (std::int64_t r = 0; r < tokens; ++r) {
    targets.data<std::int32_t>()[r] = r % 4 == 1 ? -1 : static_cast<std::int32_t>((r * 5) % vocab);
    weights.data<float>()[r] = 0.25f + static_cast<float>(r);
  }
  test::TempDir dir;
  write_raw(dir / "logits.bin", logits.raw(), logits.bytes());
  write_raw(dir / "targets.bin", targets.raw(), targets.bytes());
  write_raw(dir / "weights.bin", weights.raw(), weights.bytes());
  test::write_file(dir / "shape.json", nlohmann::json({tokens, vocab}).dump());
  test::write_file(dir / "scale.txt", "0.125");
  const auto ref =
      test::run_shell(test::python() + " " +
                      (test::source_dir() / "tests/reference/diffusion_weighted_ce.py").string() +
                      " " + dir.path().string());
  ASSERT_EQ(ref.exit_code, 0) << ref.out;

  const double sum = cpu.weighted_cross_entropy_forward(logits, targets, weights, -1, lse);
  const double ref_sum = std::stod(test::read_file(dir / "loss.txt"));
  EXPECT_NEAR(sum, ref_sum, 1e-6 * std::abs(ref_sum));
  Tensor dlogits = cpu.empty(logits.shape());
  cpu.weighted_cross_entropy_backward(logits, targets, lse, weights, -1, 0.125f, dlogits);
  const std::string bytes = test::read_file(dir / "dlogits.bin");
  std::vector<float> ref_grad(bytes.size() / sizeof(float));
  std::memcpy(ref_grad.data(), bytes.data(), bytes.size());
  const std::vector<float> got(dlogits.data<float>(), dlogits.data<float>() + dlogits.numel());
  EXPECT_LT(normalised_error(got, ref_grad), 1e-6);

  // The vocabulary-parallel path (tensor parallelism) over two uneven shards, ids [0, 6) and
  // [6, 11), as two TP ranks would run it, with the all-reduces done by hand: the same loss
  // and the same gradient columns.
  const std::int64_t split = 6;
  std::vector<Tensor> shards;
  for (auto [begin, end] : {std::pair<std::int64_t, std::int64_t>{0, split}, {split, vocab}}) {
    Tensor shard = cpu.empty({tokens, end - begin});
    for (std::int64_t r = 0; r < tokens; ++r)
      for (std::int64_t c = begin; c < end; ++c)
        shard.data<float>()[r * (end - begin) + c - begin] = logits.data<float>()[r * vocab + c];
    shards.push_back(shard);
  }
  Tensor max = cpu.empty({tokens}), shard_max = cpu.empty({tokens});
  cpu.row_max(shards[0], max);
  cpu.row_max(shards[1], shard_max);
  for (std::int64_t r = 0; r < tokens; ++r)
    max.data<float>()[r] = std::max(max.data<float>()[r], shard_max.data<float>()[r]);
  Tensor sum_exp = cpu.zeros({tokens}), target = cpu.zeros({tokens});
  for (std::size_t k = 0; k < 2; ++k) {
    Tensor e = cpu.empty({tokens}), t = cpu.empty({tokens});
    cpu.cross_entropy_stats(shards[k], targets, k == 0 ? 0 : split, max, e, t);
    for (std::int64_t r = 0; r < tokens; ++r) {
      sum_exp.data<float>()[r] += e.data<float>()[r];
      target.data<float>()[r] += t.data<float>()[r];
    }
  }
  Tensor shard_lse = cpu.empty({tokens});
  const double shard_sum =
      cpu.weighted_cross_entropy_finish(max, sum_exp, target, targets, weights, -1, shard_lse);
  EXPECT_NEAR(shard_sum, ref_sum, 1e-6 * std::abs(ref_sum));
  std::vector<float> shard_grad(static_cast<std::size_t>(tokens * vocab));
  for (std::size_t k = 0; k < 2; ++k) {
    const std::int64_t begin = k == 0 ? 0 : split, cols = shards[k].dim(1);
    Tensor d = cpu.empty(shards[k].shape());
    cpu.weighted_cross_entropy_backward_sharded(shards[k], targets, shard_lse, weights, -1, begin,
                                                0.125f, d);
    for (std::int64_t r = 0; r < tokens; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        shard_grad[static_cast<std::size_t>(r * vocab + begin + c)] = d.data<float>()[r * cols + c];
  }
  EXPECT_LT(normalised_error(shard_grad, ref_grad), 1e-6);
}

struct Fixture {
  Arena arena;
  CpuBackend cpu{arena};
  ModelConfig config;
  ParameterSet params;
  explicit Fixture(bool tied = false) : config(test::diffusion_test_config(tied)) {
    params = make_parameters(cpu, config);
    init_parameters(params, config, 21);
  }
};

DiffusionOptions options_for(std::int64_t block, bool shift, const ModelConfig& config) {
  DiffusionOptions o;
  o.block_size = block;
  o.logit_shift = shift;
  o.mask_token = static_cast<std::int32_t>(config.vocab_size - 1);
  o.seed = 99;
  o.masking = {MaskSchedule::position_dependent, 2.0};
  return o;
}

struct EquivalenceCase {
  std::int64_t block, n;
  bool shift, tied;
  friend void PrintTo(const EquivalenceCase& c, std::ostream* out) {
    *out << "B" << c.block << " n" << c.n << (c.shift ? " shift" : "") << (c.tied ? " tied" : "");
  }
};

class OnePassEquivalence : public ::testing::TestWithParam<EquivalenceCase> {};

// The naive computation: for every sequence and block b, one forward over
// z = [x_0[0, bB) ; x_t[bB, bB + L)] (clean prefix then that noisy block, positions 0..bB+L-1,
// block-causal so the prefix is exactly the clean half's context and the noisy block sees the
// whole prefix and itself). A masked token i of block b is predicted by z's output at i, or
// at i - 1 with the logit shift, with weight 1/t.
TEST_P(OnePassEquivalence, LossAndGradientsMatchNaivePerBlockForwards) {
  const EquivalenceCase c = GetParam();
  Fixture f(c.tied);
  Transformer model(f.cpu, f.config, f.params);
  const DiffusionOptions options = options_for(c.block, c.shift, f.config);
  const std::int64_t rows = 2, global_batch = 5, first = 3, step = 4, n = c.n;
  const auto clean = test::random_tokens(rows * n, f.config.vocab_size - 1, 17);
  const float scale = 1.0f / static_cast<float>(rows * n);

  DiffusionObjective objective(f.cpu, model, options);
  test::zero_grads(f.params);
  const LossSum one_pass =
      objective.forward_backward(clean.data(), rows, n, {step, first, global_batch}, scale);
  EXPECT_EQ(one_pass.tokens, rows * n);
  const auto one_pass_grads = test::grads_of(f.params);

  test::zero_grads(f.params);
  const NoiseSampler sampler(options.seed, step, options.noise, options.masking, n, c.block,
                             global_batch);
  double naive_sum = 0.0;
  std::int64_t masked = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const SequenceNoise noise = sampler.draw(first + r);
    for (std::int64_t b = 0; b * c.block < n; ++b) {
      const std::int64_t begin = b * c.block, len = std::min(c.block, n - begin);
      const std::int64_t width = begin + len;
      Tensor z = f.cpu.empty({1, width}, DType::i32), pos = f.cpu.empty({width}, DType::i32);
      Tensor targets = f.cpu.empty({1, width}, DType::i32), weights = f.cpu.zeros({1, width});
      for (std::int64_t i = 0; i < width; ++i) {
        const std::int32_t x0 = clean[static_cast<std::size_t>(r * n + i)];
        const bool is_masked = i >= begin && noise.masked[static_cast<std::size_t>(i)];
        z.data<std::int32_t>()[i] = is_masked ? options.mask_token : x0;
        pos.data<std::int32_t>()[i] = static_cast<std::int32_t>(i);
        targets.data<std::int32_t>()[i] = -1;
      }
      for (std::int64_t i = begin; i < width; ++i) {
        if (!noise.masked[static_cast<std::size_t>(i)]) continue;
        ++masked;
        const std::int64_t row = c.shift ? i - 1 : i;
        if (row < 0) continue;
        targets.data<std::int32_t>()[row] = clean[static_cast<std::size_t>(r * n + i)];
        weights.data<float>()[row] = static_cast<float>(1.0 / noise.t[static_cast<std::size_t>(i)]);
      }
      naive_sum +=
          model
              .forward_backward(z, pos, targets, AttentionMask{MaskKind::block_causal, c.block, 0},
                                scale, weights)
              .sum;
    }
  }
  ASSERT_GT(masked, 0);
  EXPECT_NEAR(one_pass.sum, naive_sum, 1e-5 * std::abs(naive_sum));
  const auto naive_grads = test::grads_of(f.params);
  std::size_t i = 0;
  for (const auto& p : f.params.all()) {
    EXPECT_LT(normalised_error(one_pass_grads[i], naive_grads[i]), 1e-5) << p.name;
    ++i;
  }
}

INSTANTIATE_TEST_SUITE_P(Blocks, OnePassEquivalence,
                         ::testing::Values(EquivalenceCase{4, 12, false, false},
                                           EquivalenceCase{4, 11, true, false},
                                           EquivalenceCase{3, 10, true, true},
                                           EquivalenceCase{1, 6, false, false},
                                           EquivalenceCase{8, 13, false, true}),
                         [](const auto& info) {
                           const auto& c = info.param;
                           return "B" + std::to_string(c.block) + "_n" + std::to_string(c.n) +
                                  (c.shift ? "_shift" : "_noshift") + (c.tied ? "_tied" : "");
                         });

// AR training's loss and gradients on x_0: next-token targets, the last position ignored.
LossSum ar_reference(Fixture& f, Transformer& model, const std::vector<std::int32_t>& clean,
                     std::int64_t rows, std::int64_t n, float scale,
                     std::vector<double>* per_token) {
  Tensor tokens = f.cpu.empty({rows, n}, DType::i32), targets = f.cpu.empty({rows, n}, DType::i32);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < n; ++i) {
      tokens.data<std::int32_t>()[r * n + i] = clean[static_cast<std::size_t>(r * n + i)];
      targets.data<std::int32_t>()[r * n + i] =
          i + 1 < n ? clean[static_cast<std::size_t>(r * n + i + 1)] : -1;
    }
  if (per_token != nullptr) {
    // Per-token CE from the logits, for the sampled-t comparison.
    const Tensor logits = model.logits(tokens);
    const std::int64_t v = f.config.vocab_size;
    per_token->assign(static_cast<std::size_t>(rows * n), 0.0);
    for (std::int64_t t = 0; t < rows * n; ++t) {
      const std::int32_t target = targets.data<std::int32_t>()[t];
      if (target < 0) continue;
      const float* row = logits.data<float>() + t * v;
      double max = row[0], sum = 0;
      for (std::int64_t k = 0; k < v; ++k) max = std::max(max, static_cast<double>(row[k]));
      for (std::int64_t k = 0; k < v; ++k) sum += std::exp(row[k] - max);
      (*per_token)[static_cast<std::size_t>(t)] = max + std::log(sum) - row[target];
    }
  }
  return model.forward_backward(tokens, targets, scale);
}

TEST(BlockSizeOneWithShift, IsAutoregressiveTraining) {
  Fixture f;
  Transformer model(f.cpu, f.config, f.params);
  DiffusionOptions options = options_for(1, true, f.config);
  options.noise.fixed_t = 1.0;  // every token masked, weight 1
  const std::int64_t rows = 3, n = 9;
  const auto clean = test::random_tokens(rows * n, f.config.vocab_size - 1, 5);
  const float scale = 1.0f / 27.0f;
  DiffusionObjective objective(f.cpu, model, options);
  test::zero_grads(f.params);
  const LossSum diffusion = objective.forward_backward(clean.data(), rows, n, {0, 0, rows}, scale);
  const auto diffusion_grads = test::grads_of(f.params);
  test::zero_grads(f.params);
  const LossSum ar = ar_reference(f, model, clean, rows, n, scale, nullptr);
  EXPECT_NEAR(diffusion.sum, ar.sum, 1e-6 * std::abs(ar.sum));
  const auto ar_grads = test::grads_of(f.params);
  std::size_t i = 0;
  for (const auto& p : f.params.all()) {
    EXPECT_LT(normalised_error(diffusion_grads[i], ar_grads[i]), 1e-5) << p.name;
    ++i;
  }
}

// At sampled levels, B = 1 with shift is AR's per-token loss on the masked tokens, each / t.
TEST(BlockSizeOneWithShift, SampledLevelsWeighAutoregressiveTokenLosses) {
  Fixture f;
  Transformer model(f.cpu, f.config, f.params);
  const DiffusionOptions options = options_for(1, true, f.config);
  const std::int64_t rows = 2, n = 10;
  const auto clean = test::random_tokens(rows * n, f.config.vocab_size - 1, 8);
  DiffusionObjective objective(f.cpu, model, options);
  const LossSum diffusion = objective.loss(clean.data(), rows, n, {3, 0, rows});
  std::vector<double> per_token;
  ar_reference(f, model, clean, rows, n, 0.0f, &per_token);
  const NoiseSampler sampler(options.seed, 3, options.noise, options.masking, n, 1, rows);
  double expected = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const SequenceNoise noise = sampler.draw(r);
    for (std::int64_t i = 1; i < n; ++i)
      if (noise.masked[static_cast<std::size_t>(i)])
        expected += per_token[static_cast<std::size_t>(r * n + i - 1)] /
                    static_cast<double>(static_cast<float>(noise.t[static_cast<std::size_t>(i)]));
  }
  EXPECT_NEAR(diffusion.sum, expected, 1e-5 * std::abs(expected));
}

TEST(DiffusionBatchLayout, HalvesPositionsTargetsAndWeights) {
  Fixture f;
  const DiffusionOptions options = options_for(4, false, f.config);
  const std::int64_t rows = 3, n = 10;
  const auto clean = test::random_tokens(rows * n, 22, 2);
  const DiffusionBatch b =
      build_diffusion_batch(f.cpu, options, clean.data(), rows, n, 1, 0, 3, -1);
  const NoiseSampler sampler(options.seed, 1, options.noise, options.masking, n, 4, 3);
  EXPECT_EQ(b.mask.kind, MaskKind::block_diffusion);
  EXPECT_EQ(b.mask.clean_offset, n);
  EXPECT_EQ(b.loss_tokens, rows * n);
  std::int64_t masked = 0;
  for (std::int64_t i = 0; i < 2 * n; ++i) EXPECT_EQ(b.positions.data<std::int32_t>()[i], i % n);
  for (std::int64_t r = 0; r < rows; ++r) {
    const SequenceNoise noise = sampler.draw(r);
    for (std::int64_t i = 0; i < n; ++i) {
      const auto at = static_cast<std::size_t>(r * n + i);
      const std::int64_t xt = r * 2 * n + i, x0 = xt + n;
      const bool m = noise.masked[static_cast<std::size_t>(i)];
      masked += m;
      EXPECT_EQ(b.tokens.data<std::int32_t>()[x0], clean[at]) << "clean half is never masked";
      EXPECT_EQ(b.tokens.data<std::int32_t>()[xt], m ? options.mask_token : clean[at]);
      EXPECT_EQ(b.targets.data<std::int32_t>()[xt], m ? clean[at] : -1);
      EXPECT_EQ(b.targets.data<std::int32_t>()[x0], -1);
      EXPECT_FLOAT_EQ(b.weights.data<float>()[xt],
                      m ? static_cast<float>(1.0 / noise.t[static_cast<std::size_t>(i)]) : 0.0f);
    }
  }
  EXPECT_EQ(b.masked, masked);
  EXPECT_GT(masked, 0);
}

// Two ranks holding samples [0, 2) and [2, 4) build exactly the rows one rank builds for [0, 4).
TEST(DiffusionBatchLayout, RowsDependOnlyOnGlobalSampleIndex) {
  Fixture f;
  DiffusionOptions options = options_for(4, true, f.config);
  options.noise.sampling = NoiseSampling::stratified;
  const std::int64_t n = 8;
  const auto clean = test::random_tokens(4 * n, 22, 6);
  const DiffusionBatch whole =
      build_diffusion_batch(f.cpu, options, clean.data(), 4, n, 2, 0, 4, -1);
  for (std::int64_t first : {0, 2}) {
    const DiffusionBatch part =
        build_diffusion_batch(f.cpu, options, clean.data() + first * n, 2, n, 2, first, 4, -1);
    for (std::int64_t i = 0; i < 2 * 2 * n; ++i) {
      const std::int64_t at = first * 2 * n + i;
      EXPECT_EQ(part.tokens.data<std::int32_t>()[i], whole.tokens.data<std::int32_t>()[at]);
      EXPECT_EQ(part.targets.data<std::int32_t>()[i], whole.targets.data<std::int32_t>()[at]);
      EXPECT_EQ(part.weights.data<float>()[i], whole.weights.data<float>()[at]);
    }
  }
}

TEST(DiffusionObjectiveOptions, BadOptionsAreInputErrors) {
  Fixture f;
  Transformer model(f.cpu, f.config, f.params);
  DiffusionOptions o = options_for(4, true, f.config);
  o.mask_token = 23;
  EXPECT_THROW(DiffusionObjective(f.cpu, model, o), InputError);
  o = options_for(65, true, f.config);
  EXPECT_THROW(DiffusionObjective(f.cpu, model, o), InputError);
  o = options_for(4, true, f.config);
  o.ar_weight = -1;
  EXPECT_THROW(DiffusionObjective(f.cpu, model, o), InputError);
}

// With an AR term the loss adds ar_weight * the causal next-token loss of x_0.
TEST(DiffusionObjectiveOptions, ArWeightAddsCausalLoss) {
  Fixture f;
  Transformer model(f.cpu, f.config, f.params);
  DiffusionOptions o = options_for(4, false, f.config);
  const std::int64_t rows = 2, n = 8;
  const auto clean = test::random_tokens(rows * n, 22, 12);
  const double plain =
      DiffusionObjective(f.cpu, model, o).loss(clean.data(), rows, n, {0, 0, 2}).sum;
  o.ar_weight = 0.5;
  const double mixed =
      DiffusionObjective(f.cpu, model, o).loss(clean.data(), rows, n, {0, 0, 2}).sum;
  const LossSum ar = ar_reference(f, model, clean, rows, n, 0.0f, nullptr);
  EXPECT_NEAR(mixed, plain + 0.5 * ar.sum, 1e-6 * mixed);
}

}  // namespace
}  // namespace metamorph::diffusion

namespace metamorph::diffusion {
namespace {

// Growing the vocabulary by [MASK] keeps every old logit of an untied model, and a tied model's
// old logits too (its new head row only adds a column).
TEST(MaskToken, GrowingTheVocabularyKeepsOldLogits) {
  for (bool tied : {false, true}) {
    Fixture f(tied);
    const auto clean = test::random_tokens(2 * 7, 23, 3);
    Tensor tokens = f.cpu.empty({2, 7}, DType::i32);
    std::copy(clean.begin(), clean.end(), tokens.data<std::int32_t>());
    std::vector<float> before;
    {
      Transformer model(f.cpu, f.config, f.params);
      const Tensor logits = model.logits(tokens);
      before.assign(logits.data<float>(), logits.data<float>() + logits.numel());
    }
    const std::int32_t mask = add_mask_token(f.cpu, f.config, f.params);
    EXPECT_EQ(mask, 23);
    EXPECT_EQ(f.config.vocab_size, 24);
    EXPECT_EQ(f.params.find("model.embed_tokens.weight")->global_shape, (Shape{24, 16}));
    Transformer model(f.cpu, f.config, f.params);
    const Tensor logits = model.logits(tokens);
    // Equal up to summation order: OpenBLAS may block a 24-column product differently from a
    // 23-column one (a few ulps apart on some CPUs).
    for (std::int64_t r = 0; r < 14; ++r) {
      for (std::int64_t v = 0; v < 23; ++v) {
        const float old_logit = before[static_cast<std::size_t>(r * 23 + v)];
        ASSERT_NEAR(logits.data<float>()[r * 24 + v], old_logit,
                    1e-5f * std::max(1.0f, std::abs(old_logit)));
      }
      if (!tied) {
        EXPECT_EQ(logits.data<float>()[r * 24 + 23], 0.0f);
      }
    }
    // The new embedding row is the mean of the old ones.
    const Parameter* e = f.params.find("model.embed_tokens.weight");
    double mean0 = 0;
    for (std::int64_t r = 0; r < 23; ++r) mean0 += e->value.data<float>()[r * 16];
    EXPECT_NEAR(e->value.data<float>()[23 * 16], mean0 / 23, 1e-6);
  }
}

}  // namespace
}  // namespace metamorph::diffusion

namespace metamorph::diffusion {
namespace {

// The whole one-pass objective (loss and every gradient) against an independent PyTorch
// implementation with a dense mask built from the BD3-LM rule (tests/reference/
// diffusion_reference.py).
TEST(DiffusionObjectiveReference, LossAndGradientsMatchPyTorch) {
  for (bool shift : {false, true}) {
    Fixture f(shift);  // tied with the shift, untied without
    Transformer model(f.cpu, f.config, f.params);
    const DiffusionOptions options = options_for(4, shift, f.config);
    const std::int64_t rows = 2, n = 10;
    const auto clean = test::random_tokens(rows * n, 22, 41);
    const DiffusionBatch b =
        build_diffusion_batch(f.cpu, options, clean.data(), rows, n, 0, 0, rows, -1);
    test::TempDir dir;
    test::write_file(dir / "config.json", model_config_to_json(f.config).dump());
    nlohmann::json specs = nlohmann::json::array();
    {
      std::ofstream out(dir / "params.bin", std::ios::binary);
      for (const auto& p : f.params.all()) {
        specs.push_back({p.name, p.global_shape});
        out.write(static_cast<const char*>(p.value.raw()),
                  static_cast<std::streamsize>(p.value.bytes()));
      }
    }
    test::write_file(dir / "params.json", specs.dump());
    write_raw(dir / "tokens.bin", b.tokens.raw(), b.tokens.bytes());
    write_raw(dir / "targets.bin", b.targets.raw(), b.targets.bytes());
    write_raw(dir / "weights.bin", b.weights.raw(), b.weights.bytes());
    const float scale = 1.0f / 20.0f;
    test::write_file(dir / "meta.json",
                     nlohmann::json({{"n", n}, {"block", 4}, {"scale", 0.05}}).dump());
    const auto ref =
        test::run_shell(test::python() + " " +
                        (test::source_dir() / "tests/reference/diffusion_reference.py").string() +
                        " " + dir.path().string());
    ASSERT_EQ(ref.exit_code, 0) << ref.out;

    test::zero_grads(f.params);
    DiffusionObjective objective(f.cpu, model, options);
    const LossSum loss = objective.forward_backward(clean.data(), rows, n, {0, 0, rows}, scale);
    const double ref_loss = std::stod(test::read_file(dir / "loss.txt"));
    EXPECT_NEAR(loss.sum, ref_loss, 1e-5 * std::abs(ref_loss)) << "shift " << shift;
    const std::string bytes = test::read_file(dir / "grads.bin");
    std::vector<float> ref_grads(bytes.size() / sizeof(float));
    std::memcpy(ref_grads.data(), bytes.data(), bytes.size());
    std::size_t offset = 0;
    for (const auto& p : f.params.all()) {
      const std::vector<float> got(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel());
      const std::vector<float> want(
          ref_grads.begin() + static_cast<std::ptrdiff_t>(offset),
          ref_grads.begin() + static_cast<std::ptrdiff_t>(offset + got.size()));
      EXPECT_LT(normalised_error(got, want), 1e-4) << p.name << " shift " << shift;
      offset += got.size();
    }
  }
}

}  // namespace
}  // namespace metamorph::diffusion

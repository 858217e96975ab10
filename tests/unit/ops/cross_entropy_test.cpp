// Softmax cross-entropy against PyTorch and finite differences; ignored rows, large logits and
// the in-place backward.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/ops/finite_difference.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

using test::relative_error;
constexpr std::int32_t kIgnore = -100;

std::vector<std::int32_t> make_targets(std::int64_t tokens, std::int64_t vocab,
                                       std::uint32_t seed) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(tokens));
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] =
        static_cast<std::int32_t>((seed * 7919u + i * 104729u) % static_cast<std::size_t>(vocab));
  t[1] = kIgnore;
  t[t.size() - 1] = kIgnore;
  return t;
}

TEST(CrossEntropy, MatchesPyTorchLossLseAndGradient) {
  struct Case {
    std::int64_t tokens, vocab;
    float logit_range, row_shift, grad_scale;
  };
  const std::vector<Case> cases = {
      {9, 37, 3.0f, 0.0f, 0.25f},
      {6, 37, 50.0f, 3000.0f, 1.0f},  // peaked softmax and a huge offset: must stay stable
      {64, 600, 5.0f, 0.0f, 1.0f / 64.0f},
  };
  Arena arena;
  CpuBackend cpu(arena);
  test::TempDir dir;
  struct Result {
    double loss;
    Tensor lse, dlogits, dlogits_in_place;
  };
  std::vector<Result> results;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const auto cd = test::case_dir(dir.path(), i);
    const auto seed = static_cast<std::uint32_t>(400 + 10 * i);
    Tensor logits =
        test::random_tensor(cpu, {c.tokens, c.vocab}, seed, -c.logit_range, c.logit_range);
    for (std::int64_t v = 0; v < c.vocab; ++v) logits.data<float>()[v] += c.row_shift;
    Tensor targets = test::int_tensor(cpu, make_targets(c.tokens, c.vocab, seed));
    test::save_npy(cd / "logits.npy", logits);
    test::save_npy(cd / "targets.npy", targets);
    test::save_json(cd / "params.json",
                    {{"ignore_index", kIgnore}, {"grad_scale", static_cast<double>(c.grad_scale)}});
    Result r{0.0, cpu.empty({c.tokens}), cpu.empty({c.tokens, c.vocab}),
             cpu.empty({c.tokens, c.vocab})};
    r.loss = cpu.cross_entropy_forward(logits, targets, kIgnore, r.lse);
    cpu.cross_entropy_backward(logits, targets, r.lse, kIgnore, c.grad_scale, r.dlogits);
    cpu.cross_entropy_backward(logits, targets, r.lse, kIgnore, c.grad_scale, logits);
    r.dlogits_in_place = logits;
    results.push_back(r);
  }
  test::run_reference("ops_cross_entropy.py", dir.path());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto cd = test::case_dir(dir.path(), i);
    SCOPED_TRACE("case " + std::to_string(i));
    EXPECT_LE(relative_error({results[i].loss}, test::load_npy(cd / "loss.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].lse, test::load_npy(cd / "lse.npy")), 1e-5);
    const auto dlogits = test::load_npy(cd / "dlogits.npy");
    EXPECT_LE(relative_error(results[i].dlogits, dlogits), 1e-5);
    EXPECT_LE(relative_error(results[i].dlogits_in_place, dlogits), 1e-5);
  }
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  Arena arena;
  CpuBackend cpu(arena);
  const std::int64_t tokens = 4, vocab = 11;
  Tensor logits = test::random_tensor(cpu, {tokens, vocab}, 1, -3.0f, 3.0f);
  Tensor targets = test::int_tensor(cpu, {3, kIgnore, 0, 10});
  Tensor lse = cpu.empty({tokens});
  const auto numeric = test::numeric_gradient(
      logits, [&] { return cpu.cross_entropy_forward(logits, targets, kIgnore, lse); });
  cpu.cross_entropy_forward(logits, targets, kIgnore, lse);
  Tensor dlogits = cpu.empty({tokens, vocab});
  cpu.cross_entropy_backward(logits, targets, lse, kIgnore, 1.0f, dlogits);
  EXPECT_LE(relative_error(dlogits, numeric), test::kFiniteDifferenceTolerance);
}

TEST(CrossEntropy, RejectsATargetOutsideTheVocabulary) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor logits = cpu.zeros({2, 5});
  Tensor lse = cpu.empty({2});
  Tensor targets = test::int_tensor(cpu, {1, 5});
  EXPECT_THROW(cpu.cross_entropy_forward(logits, targets, kIgnore, lse), InputError);
}

}  // namespace
}  // namespace metamorph

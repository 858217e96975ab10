// Attention forward/backward against a dense float64 PyTorch reference for every mask kind, GQA
// and MHA, KV-cached offsets and rows with no allowed key; and against finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/ops/finite_difference.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

using test::relative_error;

struct AttentionCase {
  std::int64_t batch, sq, sk, heads, kv_heads, dim;
  MaskKind kind;
  std::int64_t block_size = 1, clean_offset = 0, q_offset = 0;
  float scale = 0.0f;  // 0: 1/sqrt(dim)

  AttentionMask mask() const {
    AttentionMask m;
    m.kind = kind;
    m.block_size = block_size;
    m.clean_offset = clean_offset;
    return m;
  }
  float softmax_scale() const {
    return scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(dim));
  }
  std::string name() const {
    const char* kinds[] = {"causal", "full", "block_causal", "block_diffusion"};
    return kinds[static_cast<int>(kind)];
  }
};

const std::vector<AttentionCase>& reference_cases() {
  static const std::vector<AttentionCase> cases = {
      {2, 7, 7, 3, 3, 6, MaskKind::causal},                         // MHA
      {1, 9, 9, 4, 2, 8, MaskKind::causal},                         // GQA
      {2, 5, 11, 6, 2, 6, MaskKind::full, 1, 0, 0, 0.7f},           // cross lengths
      {1, 11, 11, 2, 1, 6, MaskKind::block_causal, 4},              // partial last block
      {1, 14, 14, 4, 2, 6, MaskKind::block_diffusion, 3, 7},        // [x_t; x_0], n = 7
      {1, 6, 14, 2, 1, 6, MaskKind::block_diffusion, 3, 7, 2},      // noisy+clean, offset
      {1, 5, 14, 2, 2, 6, MaskKind::block_diffusion, 3, 7, 9},      // clean decoding
      {1, 3, 10, 4, 1, 8, MaskKind::causal, 1, 0, 7},               // KV-cached decoding
      {1, 5, 5, 2, 1, 6, MaskKind::block_diffusion, 3, 7, 2},       // last row has no key
      {1, 150, 150, 2, 1, 64, MaskKind::causal},                    // several tiles
      {2, 200, 200, 2, 2, 32, MaskKind::block_diffusion, 16, 100},  // several tiles
      {1, 130, 130, 3, 1, 16, MaskKind::block_causal, 32},
  };
  return cases;
}

TEST(Attention, MatchesPyTorchForEveryMaskKind) {
  Arena arena;
  CpuBackend cpu(arena);
  test::TempDir dir;
  struct Result {
    Tensor out, lse, dq, dk, dv;
  };
  std::vector<Result> results;
  const auto& cases = reference_cases();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const AttentionCase& c = cases[i];
    const auto cd = test::case_dir(dir.path(), i);
    const auto seed = static_cast<std::uint32_t>(600 + 10 * i);
    const Shape q_shape{c.batch, c.sq, c.heads, c.dim}, kv_shape{c.batch, c.sk, c.kv_heads, c.dim};
    Tensor q = test::random_tensor(cpu, q_shape, seed, -2.0f, 2.0f);
    Tensor k = test::random_tensor(cpu, kv_shape, seed + 1, -2.0f, 2.0f);
    Tensor v = test::random_tensor(cpu, kv_shape, seed + 2);
    Tensor dout = test::random_tensor(cpu, q_shape, seed + 3);
    for (const auto& [name, t] : {std::pair{"q", &q}, {"k", &k}, {"v", &v}, {"dout", &dout}})
      test::save_npy(cd / (std::string(name) + ".npy"), *t);
    test::save_json(cd / "params.json", {{"kind", c.name()},
                                         {"block_size", c.block_size},
                                         {"clean_offset", c.clean_offset},
                                         {"q_offset", c.q_offset},
                                         {"scale", static_cast<double>(c.softmax_scale())}});
    // NaN everywhere first: the op must overwrite every output element.
    Result r{cpu.empty(q_shape), cpu.empty({c.batch, c.heads, c.sq}), cpu.empty(q_shape),
             cpu.empty(kv_shape), cpu.empty(kv_shape)};
    for (Tensor* t : {&r.out, &r.lse, &r.dq, &r.dk, &r.dv}) cpu.fill(*t, nan);
    cpu.attention_forward(q, k, v, c.mask(), c.softmax_scale(), r.out, r.lse, c.q_offset);
    cpu.attention_backward(dout, q, k, v, r.out, r.lse, c.mask(), c.softmax_scale(), r.dq, r.dk,
                           r.dv, c.q_offset);
    results.push_back(r);
  }
  test::run_reference("ops_attention.py", dir.path());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const AttentionCase& c = cases[i];
    const auto cd = test::case_dir(dir.path(), i);
    SCOPED_TRACE("case " + std::to_string(i) + " " + c.name() + " sq " + std::to_string(c.sq) +
                 " sk " + std::to_string(c.sk) + " q_offset " + std::to_string(c.q_offset));
    EXPECT_LE(relative_error(results[i].out, test::load_npy(cd / "out.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].lse, test::load_npy(cd / "lse.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].dq, test::load_npy(cd / "dq.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].dk, test::load_npy(cd / "dk.npy")), 1e-5);
    EXPECT_LE(relative_error(results[i].dv, test::load_npy(cd / "dv.npy")), 1e-5);
  }
}

TEST(Attention, RowWithoutAllowedKeysGivesZeroOutputAndMinusInfinityLse) {
  Arena arena;
  CpuBackend cpu(arena);
  // Queries at positions 6..7 of a block-diffusion sequence (n = 7, blocks of 3) whose keys stop
  // at 4: query 6's noisy block starts at key 6, query 7's clean block at key 7.
  AttentionCase c{1, 2, 4, 2, 1, 4, MaskKind::block_diffusion, 3, 7, 6};
  Tensor q = test::random_tensor(cpu, {1, 2, 2, 4}, 1),
         k = test::random_tensor(cpu, {1, 4, 1, 4}, 2);
  Tensor v = test::random_tensor(cpu, {1, 4, 1, 4}, 3),
         dout = test::random_tensor(cpu, {1, 2, 2, 4}, 4);
  Tensor out = cpu.empty({1, 2, 2, 4}), lse = cpu.empty({1, 2, 2});
  Tensor dq = cpu.empty({1, 2, 2, 4}), dk = cpu.empty({1, 4, 1, 4}), dv = cpu.empty({1, 4, 1, 4});
  cpu.attention_forward(q, k, v, c.mask(), c.softmax_scale(), out, lse, c.q_offset);
  cpu.attention_backward(dout, q, k, v, out, lse, c.mask(), c.softmax_scale(), dq, dk, dv,
                         c.q_offset);
  for (std::int64_t i = 0; i < lse.numel(); ++i)
    EXPECT_EQ(lse.data<float>()[i], -std::numeric_limits<float>::infinity());
  for (const Tensor* t : {&out, &dq, &dk, &dv})
    for (std::int64_t i = 0; i < t->numel(); ++i) EXPECT_EQ(t->data<float>()[i], 0.0f);
}

TEST(Attention, BackwardMatchesFiniteDifferencesForEveryMaskKind) {
  const std::vector<AttentionCase> cases = {
      {1, 5, 5, 2, 1, 4, MaskKind::causal},
      {1, 3, 6, 2, 2, 4, MaskKind::full},
      {1, 5, 5, 2, 1, 4, MaskKind::block_causal, 2},
      {1, 6, 10, 2, 1, 4, MaskKind::block_diffusion, 2, 5, 3},
      {1, 2, 7, 2, 1, 4, MaskKind::causal, 1, 0, 5},
  };
  Arena arena;
  CpuBackend cpu(arena);
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE(c.name() + " q_offset " + std::to_string(c.q_offset));
    const Shape q_shape{c.batch, c.sq, c.heads, c.dim}, kv_shape{c.batch, c.sk, c.kv_heads, c.dim};
    Tensor q = test::random_tensor(cpu, q_shape, 11, -2.0f, 2.0f);
    Tensor k = test::random_tensor(cpu, kv_shape, 12, -2.0f, 2.0f);
    Tensor v = test::random_tensor(cpu, kv_shape, 13);
    Tensor weights = test::random_tensor(cpu, q_shape, 14);
    Tensor out = cpu.empty(q_shape), lse = cpu.empty({c.batch, c.heads, c.sq});
    auto objective = [&] {
      cpu.attention_forward(q, k, v, c.mask(), c.softmax_scale(), out, lse, c.q_offset);
      return test::weighted_sum(out, weights);
    };
    const auto numeric_q = test::numeric_gradient(q, objective);
    const auto numeric_k = test::numeric_gradient(k, objective);
    const auto numeric_v = test::numeric_gradient(v, objective);
    objective();
    Tensor dq = cpu.empty(q_shape), dk = cpu.empty(kv_shape), dv = cpu.empty(kv_shape);
    cpu.attention_backward(weights, q, k, v, out, lse, c.mask(), c.softmax_scale(), dq, dk, dv,
                           c.q_offset);
    EXPECT_LE(relative_error(dq, numeric_q), test::kFiniteDifferenceTolerance);
    EXPECT_LE(relative_error(dk, numeric_k), test::kFiniteDifferenceTolerance);
    EXPECT_LE(relative_error(dv, numeric_v), test::kFiniteDifferenceTolerance);
  }
}

TEST(Attention, RejectsHeadsThatDoNotGroupAndBadMasks) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor q = cpu.zeros({1, 2, 3, 4}), k = cpu.zeros({1, 2, 2, 4}), v = cpu.zeros({1, 2, 2, 4});
  Tensor out = cpu.empty({1, 2, 3, 4}), lse = cpu.empty({1, 3, 2});
  AttentionMask causal;
  EXPECT_THROW(cpu.attention_forward(q, k, v, causal, 0.5f, out, lse, 0), InputError);
  Tensor k1 = cpu.zeros({1, 2, 1, 4}), v1 = cpu.zeros({1, 2, 1, 4});
  AttentionMask zero_block;
  zero_block.kind = MaskKind::block_causal;
  zero_block.block_size = 0;
  EXPECT_THROW(cpu.attention_forward(q, k1, v1, zero_block, 0.5f, out, lse, 0), InputError);
  EXPECT_THROW(cpu.attention_forward(q, k1, v1, causal, 0.5f, out, lse, -1), InputError);
}

}  // namespace
}  // namespace metamorph

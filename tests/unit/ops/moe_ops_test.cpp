// The CPU backend's MoE permutation ops against their contract written out here as plain loops:
// moe_permute is a stable sort of the slots by expert that keeps each expert's first kept[e]
// slots; moe_combine adds each token's rows in ascending row order; grouped_matmul multiplies
// each group of rows by its own weight. (The router ops are the host arithmetic of
// runtime/core/moe_routing, which tests/unit/models checks by finite differences and against
// PyTorch through models/router and MoeBlock.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "tests/unit/ops/reference_io.hpp"

namespace metamorph {
namespace {

struct Slots {
  std::int64_t tokens, k, experts;
  std::vector<std::int32_t> expert;  // [tokens * k]
};

// Distinct experts per token, expert E-1 never chosen (an empty expert).
Slots make_slots(std::int64_t tokens, std::int64_t k, std::int64_t experts) {
  Slots s{tokens, k, experts, {}};
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t j = 0; j < k; ++j)
      s.expert.push_back(static_cast<std::int32_t>((t * 5 + j * 2 + t / 3) % (experts - 1)));
  return s;
}

TEST(MoePermutation, PermuteIsAStableSortByExpertWithDrops) {
  Arena arena;
  CpuBackend cpu(arena);
  for (auto [E, k] : {std::pair<std::int64_t, std::int64_t>{8, 2}, {6, 3}, {5, 1}}) {
    const std::int64_t n = 41;
    const Slots s = make_slots(n, k, E);
    Tensor expert = cpu.empty({n, k}, DType::i32);
    std::copy(s.expert.begin(), s.expert.end(), expert.data<std::int32_t>());
    const Tensor gate = test::random_tensor(cpu, {n, k}, 5);
    std::vector<std::int64_t> counts(static_cast<std::size_t>(E), 0);
    for (std::int32_t e : s.expert) ++counts[static_cast<std::size_t>(e)];
    for (bool capped : {false, true}) {
      std::vector<std::int64_t> kept = counts;
      if (capped)
        for (auto& c : kept) c = std::min<std::int64_t>(c, 7);
      const std::int64_t rows = std::accumulate(kept.begin(), kept.end(), std::int64_t{0});
      Tensor token_index = cpu.empty({rows}, DType::i32), row_gate = cpu.empty({rows});
      Tensor slot_row = cpu.empty({n * k}, DType::i32);
      cpu.moe_permute(expert, gate, kept, token_index, row_gate, slot_row);
      // The contract: experts in id order, each expert's slots in slot order, the first kept[e].
      std::int64_t row = 0;
      for (std::int64_t e = 0; e < E; ++e) {
        std::int64_t taken = 0;
        for (std::int64_t i = 0; i < n * k; ++i) {
          if (s.expert[static_cast<std::size_t>(i)] != e) continue;
          if (taken++ < kept[static_cast<std::size_t>(e)]) {
            ASSERT_EQ(slot_row.data<std::int32_t>()[i], row) << "slot " << i;
            ASSERT_EQ(token_index.data<std::int32_t>()[row], i / k);
            ASSERT_EQ(row_gate.data<float>()[row], gate.data<float>()[i]);
            ++row;
          } else {
            ASSERT_EQ(slot_row.data<std::int32_t>()[i], -1) << "dropped slot " << i;
          }
        }
      }
      ASSERT_EQ(row, rows);
    }
  }
}

// The combine tests' permutation: 29 tokens, top-3 of 6 experts, `dropped` of expert 1's slots
// dropped.
struct Permuted {
  static constexpr std::int64_t n = 29, k = 3, E = 6, h = 17;
  std::vector<std::int64_t> kept;
  std::int64_t rows = 0;
  Tensor token_index, row_gate, slot_row;
};

Permuted permuted(CpuBackend& cpu, std::int64_t dropped) {
  Permuted p;
  const Slots s = make_slots(p.n, p.k, p.E);
  Tensor expert = cpu.empty({p.n, p.k}, DType::i32);
  std::copy(s.expert.begin(), s.expert.end(), expert.data<std::int32_t>());
  const Tensor gate = test::random_tensor(cpu, {p.n, p.k}, 6);
  p.kept.assign(static_cast<std::size_t>(p.E), 0);
  for (std::int32_t e : s.expert) ++p.kept[static_cast<std::size_t>(e)];
  p.kept[1] -= dropped;
  p.rows = std::accumulate(p.kept.begin(), p.kept.end(), std::int64_t{0});
  p.token_index = cpu.empty({p.rows}, DType::i32);
  p.row_gate = cpu.empty({p.rows});
  p.slot_row = cpu.empty({p.n * p.k}, DType::i32);
  cpu.moe_permute(expert, gate, p.kept, p.token_index, p.row_gate, p.slot_row);
  return p;
}

TEST(MoePermutation, CombineAddsEachTokensRowsInAscendingRowOrder) {
  Arena arena;
  CpuBackend cpu(arena);
  const Permuted p = permuted(cpu, /*dropped=*/2);
  const std::int64_t n = p.n, k = p.k, h = p.h, rows = p.rows;
  const Tensor &token_index = p.token_index, &row_gate = p.row_gate, &slot_row = p.slot_row;
  const Tensor src = test::random_tensor(cpu, {rows, h}, 7);
  for (bool weighted : {false, true}) {
    Tensor y = test::random_tensor(cpu, {n, h}, 8);
    std::vector<float> expected(y.data<float>(), y.data<float>() + n * h);
    for (std::int64_t t = 0; t < n; ++t) {
      std::vector<std::int32_t> mine;
      for (std::int64_t j = 0; j < k; ++j)
        if (slot_row.data<std::int32_t>()[t * k + j] >= 0)
          mine.push_back(slot_row.data<std::int32_t>()[t * k + j]);
      std::sort(mine.begin(), mine.end());
      for (std::int32_t r : mine)
        for (std::int64_t c = 0; c < h; ++c)
          expected[static_cast<std::size_t>(t * h + c)] +=
              (weighted ? row_gate.data<float>()[r] : 1.0f) * src.data<float>()[r * h + c];
    }
    cpu.moe_combine(src, token_index, weighted ? row_gate : Tensor(), slot_row, y);
    for (std::int64_t i = 0; i < n * h; ++i)
      ASSERT_EQ(y.data<float>()[i], expected[static_cast<std::size_t>(i)]) << "element " << i;
  }
}

// A window of the rows (one rank's experts' segment) combines as all rows would with the others
// zero: bit for bit, so the TP group's partial sums are those of the zero-filled rows.
TEST(MoePermutation, CombineOfARowWindowEqualsTheOtherRowsZero) {
  Arena arena;
  CpuBackend cpu(arena);
  const Permuted p = permuted(cpu, /*dropped=*/0);
  const std::int64_t n = p.n, h = p.h, rows = p.rows;
  const std::vector<std::int64_t>& kept = p.kept;
  const Tensor &token_index = p.token_index, &row_gate = p.row_gate, &slot_row = p.slot_row;
  const std::int64_t first = kept[0] + kept[1], count = kept[2] + kept[3];
  const Tensor window = test::random_tensor(cpu, {count, h}, 7);
  Tensor padded = cpu.empty({rows, h});
  cpu.fill(padded, 0.0f);
  std::copy(window.data<float>(), window.data<float>() + count * h,
            padded.data<float>() + first * h);
  for (bool weighted : {false, true}) {
    const Tensor y0 = test::random_tensor(cpu, {n, h}, 8);
    Tensor want = cpu.empty({n, h}), got = cpu.empty({n, h});
    cpu.copy(y0, want);
    cpu.copy(y0, got);
    cpu.moe_combine(padded, token_index, weighted ? row_gate : Tensor(), slot_row, want);
    cpu.moe_combine(window, token_index, weighted ? row_gate : Tensor(), slot_row, got, first);
    for (std::int64_t i = 0; i < n * h; ++i)
      ASSERT_EQ(got.data<float>()[i], want.data<float>()[i]) << "element " << i;
    // Without accumulate: the sum alone, as into zeros; y's old values (NaN) are not read.
    Tensor zeros = cpu.empty({n, h}), fresh = cpu.empty({n, h});
    cpu.fill(zeros, 0.0f);
    cpu.fill(fresh, std::nanf(""));
    cpu.moe_combine(window, token_index, weighted ? row_gate : Tensor(), slot_row, zeros, first);
    cpu.moe_combine(window, token_index, weighted ? row_gate : Tensor(), slot_row, fresh, first,
                    /*accumulate=*/false);
    for (std::int64_t i = 0; i < n * h; ++i)
      ASSERT_EQ(fresh.data<float>()[i], zeros.data<float>()[i]) << "element " << i;
  }
  // A window past the permutation's rows.
  Tensor y = cpu.empty({n, h});
  EXPECT_THROW(cpu.moe_combine(window, token_index, Tensor(), slot_row, y, rows - count + 1),
               std::logic_error);
}

// The experts' GEMMs: groups of rows (one empty) against per-group products in double.
TEST(MoePermutation, GroupedMatmulMultipliesEachGroupByItsWeight) {
  Arena arena;
  CpuBackend cpu(arena);
  const std::vector<std::int64_t> counts = {3, 0, 5, 1};
  const std::int64_t rows = 9, in = 6, out = 4;
  const Tensor x = test::random_tensor(cpu, {rows, in}, 11);
  const Tensor dy = test::random_tensor(cpu, {rows, out}, 12);
  std::vector<Tensor> w, dw;
  for (std::size_t g = 0; g < counts.size(); ++g) {
    w.push_back(test::random_tensor(cpu, {out, in}, 20 + static_cast<std::uint32_t>(g)));
    dw.push_back(test::random_tensor(cpu, {out, in}, 30 + static_cast<std::uint32_t>(g)));
  }
  std::vector<const Tensor*> weights;
  std::vector<Tensor*> grads;
  for (std::size_t g = 0; g < counts.size(); ++g) {
    weights.push_back(&w[g]);
    grads.push_back(&dw[g]);
  }
  std::vector<std::vector<float>> dw_before;
  for (const Tensor& t : dw) dw_before.emplace_back(t.data<float>(), t.data<float>() + t.numel());
  Tensor y = cpu.empty({rows, out}), dx = cpu.empty({rows, in});
  cpu.grouped_matmul(x, weights, counts, true, y);
  cpu.grouped_matmul(dy, weights, counts, false, dx);
  cpu.grouped_matmul_weight_grad(dy, x, counts, grads);
  const float* px = x.data<float>();
  const float* pdy = dy.data<float>();
  std::int64_t at = 0;
  for (std::size_t g = 0; g < counts.size(); ++g) {
    const float* pw = w[g].data<float>();
    for (std::int64_t r = at; r < at + counts[g]; ++r) {
      for (std::int64_t o = 0; o < out; ++o) {
        double sum = 0;
        for (std::int64_t i = 0; i < in; ++i) sum += double{px[r * in + i]} * pw[o * in + i];
        EXPECT_NEAR(y.data<float>()[r * out + o], sum, 1e-5) << "group " << g << " row " << r;
      }
      for (std::int64_t i = 0; i < in; ++i) {
        double sum = 0;
        for (std::int64_t o = 0; o < out; ++o) sum += double{pdy[r * out + o]} * pw[o * in + i];
        EXPECT_NEAR(dx.data<float>()[r * in + i], sum, 1e-5) << "group " << g << " row " << r;
      }
    }
    for (std::int64_t o = 0; o < out; ++o)
      for (std::int64_t i = 0; i < in; ++i) {
        double sum = dw_before[g][static_cast<std::size_t>(o * in + i)];
        for (std::int64_t r = at; r < at + counts[g]; ++r)
          sum += double{pdy[r * out + o]} * px[r * in + i];
        EXPECT_NEAR(dw[g].data<float>()[o * in + i], sum, 1e-5) << "group " << g;
      }
    at += counts[g];
  }
}

TEST(MoePermutation, SigmoidAndItsBackward) {
  Arena arena;
  CpuBackend cpu(arena);
  const Tensor x = test::random_tensor(cpu, {33}, 9), dy = test::random_tensor(cpu, {33}, 10);
  Tensor y = cpu.empty({33}), dx = cpu.empty({33});
  cpu.sigmoid_forward(x, y);
  cpu.sigmoid_backward(dy, y, dx);
  for (std::int64_t i = 0; i < 33; ++i) {
    const double xi = x.data<float>()[i], sig = 1.0 / (1.0 + std::exp(-xi));
    EXPECT_NEAR(y.data<float>()[i], sig, 1e-7);
    EXPECT_NEAR(dx.data<float>()[i], dy.data<float>()[i] * sig * (1.0 - sig), 1e-6);
  }
}

}  // namespace
}  // namespace metamorph

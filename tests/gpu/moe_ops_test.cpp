// Mixture-of-Experts ops of the CUDA backend against the CPU backend: router scores and top-k
// (every scoring, and the benchmark mode's forced balanced choice), the router backward, the slot
// permutation with and without capacity drops, the deterministic combine, row gathers, row dot
// products, the grouped expert GEMMs and the sigmoid gate. Odd sizes: E = 8 k = 2, E = 6 k = 3,
// E = 5 k = 1, token counts that are multiples of nothing, experts that receive no token.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "tests/gpu/gpu_harness.hpp"

namespace metamorph::gpu_test {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16};
const std::int64_t kTokens[] = {1, 37, 1001};

struct RouterCase {
  const char* name;
  RouterSpec spec;
  std::string label(std::int64_t tokens) const {
    return std::string(name) + (spec.force_balance ? ", forced balanced" : "") + " tokens " +
           std::to_string(tokens);
  }
};

std::vector<RouterCase> router_cases() {
  std::vector<RouterCase> cases;
  RouterSpec s;
  s.num_experts = 8;
  s.top_k = 2;
  s.renormalise = true;
  s.aux_loss_coef = 0.01;
  cases.push_back({"softmax top-2 of 8, renormalised", s});
  s.num_experts = 6;
  s.top_k = 3;
  s.renormalise = false;
  s.z_loss_coef = 0.001;
  cases.push_back({"softmax top-3 of 6, z-loss", s});
  s.num_experts = 8;
  s.top_k = 2;
  s.sigmoid = true;
  s.renormalise = true;
  s.z_loss_coef = 0.0;
  cases.push_back({"sigmoid + bias top-2 of 8", s});
  s.num_experts = 5;
  s.top_k = 1;
  s.sigmoid = false;
  s.renormalise = false;
  cases.push_back({"softmax top-1 of 5", s});
  // The benchmark mode's fixed balanced choice (train --moe-force-balance) for every scoring.
  const std::vector<RouterCase> chosen_by_router = cases;
  for (const RouterCase& c : chosen_by_router) {
    RouterSpec forced = c.spec;
    forced.force_balance = true;
    cases.push_back({c.name, forced});
  }
  return cases;
}

using MoeOps = GpuOpTest;

void expect_same_ints(const Tensor& gpu_host, const Tensor& cpu, const std::string& what) {
  ASSERT_EQ(gpu_host.numel(), cpu.numel()) << what;
  const auto* a = gpu_host.data<std::int32_t>();
  const auto* b = cpu.data<std::int32_t>();
  for (std::int64_t i = 0; i < cpu.numel(); ++i) ASSERT_EQ(a[i], b[i]) << what << " element " << i;
}

TEST_F(MoeOps, RouterForwardMatchesTheCpu) {
  for (const RouterCase& c : router_cases())
    for (std::int64_t n : kTokens) {
      const std::string what = c.label(n);
      const std::int64_t E = c.spec.num_experts;
      // Spread logits: no two experts of a token within rounding of each other.
      Tensor logits = random({n, E}, DType::f32, -4.0f, 4.0f);
      Tensor bias = c.spec.sigmoid ? random({E}, DType::f32, -0.2f, 0.2f) : Tensor();
      const RouterOutput want = cpu_->router_forward(logits, bias, c.spec);
      const RouterOutput got =
          gpu_->router_forward(up(logits), bias.defined() ? up(bias) : Tensor(), c.spec);
      expect_same_ints(down(got.expert), want.expert, what + " experts");
      EXPECT_CLOSE(got.gate, want.gate, DType::f32, what + " gates");
      EXPECT_CLOSE(got.prob, want.prob, DType::f32, what + " probabilities");
      EXPECT_CLOSE(got.lse, want.lse, DType::f32, what + " lse");
      if (c.spec.sigmoid) EXPECT_CLOSE(got.score, want.score, DType::f32, what + " scores");
      EXPECT_EQ(got.summary.counts, want.summary.counts) << what;
      EXPECT_NEAR(got.summary.aux_loss, want.summary.aux_loss, 1e-9 + 1e-9 * want.summary.aux_loss)
          << what;
      EXPECT_NEAR(got.summary.z_loss, want.summary.z_loss, 1e-9 + 1e-9 * want.summary.z_loss)
          << what;
      EXPECT_NEAR(got.summary.entropy, want.summary.entropy, 1e-9 + 1e-9 * want.summary.entropy)
          << what;
      if (c.spec.force_balance) {
        const std::int64_t low = n * c.spec.top_k / E;
        for (std::int64_t count : got.summary.counts) {
          EXPECT_GE(count, low) << what;
          EXPECT_LE(count, low + 1) << what;
        }
      }
    }
}

TEST_F(MoeOps, RouterBackwardMatchesTheCpu) {
  for (const RouterCase& c : router_cases())
    for (std::int64_t n : kTokens) {
      const std::string what = c.label(n);
      const std::int64_t E = c.spec.num_experts, k = c.spec.top_k;
      Tensor logits = random({n, E}, DType::f32, -4.0f, 4.0f);
      Tensor bias = c.spec.sigmoid ? random({E}, DType::f32, -0.2f, 0.2f) : Tensor();
      const RouterOutput want = cpu_->router_forward(logits, bias, c.spec);
      RouterOutput got =
          gpu_->router_forward(up(logits), bias.defined() ? up(bias) : Tensor(), c.spec);
      // Every third slot dropped; the others read their gate gradient from a shuffled row.
      const std::int64_t slots = n * k;
      Tensor slot_row = Tensor::empty({slots}, DType::i32, host_arena_);
      std::int64_t rows = 0;
      for (std::int64_t s = 0; s < slots; ++s)
        slot_row.data<std::int32_t>()[s] = s % 3 == 2 ? -1 : static_cast<std::int32_t>(rows++);
      for (std::int64_t s = 0; s + 1 < slots; s += 2)
        std::swap(slot_row.data<std::int32_t>()[s], slot_row.data<std::int32_t>()[s + 1]);
      Tensor dgate_rows = random({rows});
      Tensor want_dlogits = Tensor::empty({n, E}, DType::f32, host_arena_);
      cpu_->router_backward(logits, want, c.spec, dgate_rows, slot_row, 0.5f, want_dlogits);
      Tensor dlogits = poisoned({n, E}, DType::f32);
      gpu_->router_backward(up(logits), got, c.spec, up(dgate_rows), up(slot_row), 0.5f, dlogits);
      EXPECT_CLOSE(dlogits, want_dlogits, DType::f32, what + " dlogits");
    }
}

// Random experts from a subset (some experts get nothing), then the permutation dropless and
// with per-expert limits (capacity).
TEST_F(MoeOps, PermuteSortsSlotsByExpertLikeTheCpu) {
  // 9000 tokens: more slots than one pass of the GPU's prefix count (16384) at k > 1.
  for (auto [E, k] : {std::pair<std::int64_t, std::int64_t>{8, 2}, {6, 3}, {5, 1}})
    for (std::int64_t n :
         {std::int64_t{1}, std::int64_t{37}, std::int64_t{1001}, std::int64_t{9000}})
      for (bool capped : {false, true}) {
        const std::string what = "E " + std::to_string(E) + " k " + std::to_string(k) + " tokens " +
                                 std::to_string(n) + (capped ? " capped" : "");
        Tensor expert = Tensor::empty({n, k}, DType::i32, host_arena_);
        std::vector<std::int64_t> counts(static_cast<std::size_t>(E), 0);
        for (std::int64_t t = 0; t < n; ++t) {
          // Distinct experts per token among the first E - 1 (the last one stays empty).
          std::vector<std::int32_t> ids(static_cast<std::size_t>(E - 1));
          std::iota(ids.begin(), ids.end(), 0);
          std::shuffle(ids.begin(), ids.end(), rng_);
          for (std::int64_t j = 0; j < k; ++j) {
            const std::int32_t e = ids[static_cast<std::size_t>(j % (E - 1))];
            expert.data<std::int32_t>()[t * k + j] = e;
            ++counts[static_cast<std::size_t>(e)];
          }
        }
        Tensor gate = random({n, k}, DType::f32, 0.0f, 1.0f);
        std::vector<std::int64_t> kept = counts;
        if (capped)
          for (std::size_t e = 0; e < kept.size(); ++e)
            kept[e] = std::min<std::int64_t>(kept[e], 1 + static_cast<std::int64_t>(e) * n / 7);
        const std::int64_t rows = std::accumulate(kept.begin(), kept.end(), std::int64_t{0});
        Tensor token_index = Tensor::empty({rows}, DType::i32, host_arena_);
        Tensor row_gate = Tensor::empty({rows}, DType::f32, host_arena_);
        Tensor slot_row = Tensor::empty({n * k}, DType::i32, host_arena_);
        cpu_->moe_permute(expert, gate, kept, token_index, row_gate, slot_row);
        Tensor g_token = poisoned({rows}, DType::i32), g_gate = poisoned({rows}, DType::f32);
        Tensor g_slot = poisoned({n * k}, DType::i32);
        gpu_->moe_permute(up(expert), up(gate), kept, g_token, g_gate, g_slot);
        expect_same_ints(down(g_token), token_index, what + " token_index");
        expect_same_ints(down(g_slot), slot_row, what + " slot_row");
        EXPECT_EQ(normalised_error(down(g_gate), row_gate), 0.0) << what << " row_gate";
      }
}

TEST_F(MoeOps, CombineSumsEachTokensRowsLikeTheCpu) {
  for (auto [E, k] : {std::pair<std::int64_t, std::int64_t>{8, 2}, {6, 3}, {5, 1}})
    for (std::int64_t n : kTokens)
      for (std::int64_t h : {1, 33, 256, 264})  // the last two in 16-byte runs
        for (DType dtype : kFloatTypes)
          for (bool weighted : {true, false}) {
            const std::string what = "E " + std::to_string(E) + " k " + std::to_string(k) +
                                     " tokens " + std::to_string(n) + " h " + std::to_string(h) +
                                     (weighted ? " weighted" : "");
            Tensor expert = Tensor::empty({n, k}, DType::i32, host_arena_);
            std::vector<std::int64_t> kept(static_cast<std::size_t>(E), 0);
            for (std::int64_t t = 0; t < n; ++t)
              for (std::int64_t j = 0; j < k; ++j) {
                const auto e = static_cast<std::int32_t>((t * 7 + j * 3) % E);
                expert.data<std::int32_t>()[t * k + j] = e;
              }
            for (std::int64_t s = 0; s < n * k; ++s)
              ++kept[static_cast<std::size_t>(expert.data<std::int32_t>()[s])];
            kept[0] /= 2;  // some of expert 0's slots dropped
            const std::int64_t rows = std::accumulate(kept.begin(), kept.end(), std::int64_t{0});
            Tensor gate = random({n, k}, DType::f32, 0.0f, 1.0f);
            Tensor token_index = Tensor::empty({rows}, DType::i32, host_arena_);
            Tensor row_gate = Tensor::empty({rows}, DType::f32, host_arena_);
            Tensor slot_row = Tensor::empty({n * k}, DType::i32, host_arena_);
            cpu_->moe_permute(expert, gate, kept, token_index, row_gate, slot_row);
            Tensor src = random({rows, h}, dtype);
            Tensor y = random({n, h}, dtype);
            Tensor want = Tensor::empty({n, h}, DType::f32, host_arena_);
            cpu_->copy(y, want);
            const Tensor weights = weighted ? row_gate : Tensor();
            cpu_->moe_combine(src, token_index, weights, slot_row, want);
            Tensor got = up(y, dtype);
            gpu_->moe_combine(up(src, dtype), up(token_index), weighted ? up(row_gate) : Tensor(),
                              up(slot_row), got);
            EXPECT_CLOSE(got, want, dtype, what);
            // A window of rows (one rank's experts' segment): the others add nothing.
            const std::int64_t first = rows / 3, count = rows / 2;
            Tensor window = Tensor::empty({count, h}, DType::f32, host_arena_);
            std::copy(src.data<float>() + first * h, src.data<float>() + (first + count) * h,
                      window.data<float>());
            Tensor want_window = Tensor::empty({n, h}, DType::f32, host_arena_);
            cpu_->copy(y, want_window);
            cpu_->moe_combine(window, token_index, weights, slot_row, want_window, first);
            Tensor got_window = up(y, dtype);
            gpu_->moe_combine(up(window, dtype), up(token_index),
                              weighted ? up(row_gate) : Tensor(), up(slot_row), got_window, first);
            EXPECT_CLOSE(got_window, want_window, dtype, what + " window");
            // Without accumulate: the sum alone, y's old values (NaN) not read.
            Tensor want_fresh = Tensor::empty({n, h}, DType::f32, host_arena_);
            cpu_->fill(want_fresh, 0.0f);
            cpu_->moe_combine(window, token_index, weights, slot_row, want_fresh, first);
            Tensor got_fresh = poisoned({n, h}, dtype);
            gpu_->moe_combine(up(window, dtype), up(token_index),
                              weighted ? up(row_gate) : Tensor(), up(slot_row), got_fresh, first,
                              /*accumulate=*/false);
            EXPECT_CLOSE(got_fresh, want_fresh, dtype, what + " window, not accumulated");
          }
}

TEST_F(MoeOps, GatherRowsAndRowDot) {
  for (std::int64_t m : {1, 37, 1001})
    for (std::int64_t h : {1, 33, 4099, 264, 2048})  // the last two in 16-byte runs
      for (DType dtype : kFloatTypes) {
        const std::string what = "m " + std::to_string(m) + " h " + std::to_string(h);
        const std::int64_t src_rows = 13;
        Tensor src = random({src_rows, h}, dtype);
        Tensor index = random_ids(m, 0, static_cast<std::int32_t>(src_rows));
        Tensor weights = random({m});
        for (bool weighted : {true, false}) {
          Tensor want = Tensor::empty({m, h}, DType::f32, host_arena_);
          cpu_->gather_rows(src, index, weighted ? weights : Tensor(), want);
          Tensor got = poisoned({m, h}, dtype);
          gpu_->gather_rows(up(src, dtype), up(index), weighted ? up(weights) : Tensor(), got);
          EXPECT_CLOSE(got, want, dtype, what + " gather_rows");
        }
        Tensor a = random({m, h}, dtype), b = random({m, h}, dtype);
        Tensor want = Tensor::empty({m}, DType::f32, host_arena_);
        cpu_->row_dot(a, b, want);
        Tensor got = poisoned({m}, DType::f32);
        gpu_->row_dot(up(a, dtype), up(b, dtype), got);
        EXPECT_CLOSE(got, want, DType::f32, what + " row_dot");
      }
}

// The experts' GEMMs over row groups (empty ones included, odd sizes, so group slices start at
// unaligned rows), forward, input gradient and weight gradient.
TEST_F(MoeOps, GroupedMatmulOverExpertSegments) {
  const std::vector<std::int64_t> counts = {5, 0, 17, 1, 9};
  const std::int64_t rows = 32;
  for (auto [in, out] : {std::pair<std::int64_t, std::int64_t>{33, 17}, {256, 96}})
    for (DType dtype : kFloatTypes) {
      const std::string what =
          "in " + std::to_string(in) + " out " + std::to_string(out) + " " + dtype_name(dtype);
      Tensor x = random({rows, in}, dtype), dy = random({rows, out}, dtype);
      std::vector<Tensor> w, dw, gw, gdw;
      std::vector<const Tensor*> w_cpu, w_gpu;
      std::vector<Tensor*> dw_cpu, dw_gpu;
      for (std::size_t g = 0; g < counts.size(); ++g) {
        w.push_back(random({out, in}, dtype));
        dw.push_back(random({out, in}));
      }
      for (std::size_t g = 0; g < counts.size(); ++g) {
        gw.push_back(up(w[g], dtype));
        gdw.push_back(up(dw[g], DType::f32));
      }
      for (std::size_t g = 0; g < counts.size(); ++g) {
        w_cpu.push_back(&w[g]);
        w_gpu.push_back(&gw[g]);
        dw_cpu.push_back(&dw[g]);
        dw_gpu.push_back(&gdw[g]);
      }
      Tensor y = Tensor::empty({rows, out}, DType::f32, host_arena_);
      Tensor dx = Tensor::empty({rows, in}, DType::f32, host_arena_);
      cpu_->grouped_matmul(x, w_cpu, counts, true, y);
      cpu_->grouped_matmul(dy, w_cpu, counts, false, dx);
      cpu_->grouped_matmul_weight_grad(dy, x, counts, dw_cpu);
      Tensor gy = poisoned({rows, out}, dtype), gdx = poisoned({rows, in}, dtype);
      const Tensor gx = up(x, dtype), gdy = up(dy, dtype);
      gpu_->grouped_matmul(gx, w_gpu, counts, true, gy);
      gpu_->grouped_matmul(gdy, w_gpu, counts, false, gdx);
      gpu_->grouped_matmul_weight_grad(gdy, gx, counts, dw_gpu);
      EXPECT_CLOSE(gy, y, dtype, what + " forward");
      EXPECT_CLOSE(gdx, dx, dtype, what + " input gradient");
      for (std::size_t g = 0; g < counts.size(); ++g)
        EXPECT_CLOSE(gdw[g], dw[g], dtype, what + " weight gradient of group " + std::to_string(g));
    }
}

// Elements whose bits differ between two host tensors of one shape (f32 or i32).
std::int64_t differing_elements(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  std::int64_t differ = 0;
  const auto* pa = static_cast<const unsigned char*>(a.raw());
  const auto* pb = static_cast<const unsigned char*>(b.raw());
  const std::size_t size = dtype_size(a.dtype());
  for (std::int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i)
    if (std::memcmp(pa + i * size, pb + i * size, size) != 0) ++differ;
  return differ;
}

// The grouped GEMMs with four expert streams (the weight gradients on side streams) give the bits
// of the same GEMMs one after another on the compute stream (one expert stream): uneven groups,
// empty ones among them, one much larger than the rest, more groups than streams (round-robin
// wraps) and fewer (two groups); the forward (x W^T), the input gradient (dy W) accumulating with
// alpha and beta, and the accumulated weight gradients. The concurrent results are also checked
// against the CPU.
TEST_F(MoeOps, GroupedMatmulOnExpertStreamsIsBitIdenticalToSerial) {
  // One backend, so both runs share one plan cache: the claim is the same plan, other streams.
  cuda::CudaBackend backend(*device_arena_, /*deterministic=*/true, /*expert_streams=*/4);
  ASSERT_EQ(backend.expert_streams(), 4);
  // The CPU reference accumulates into copies of the same starting values.
  auto host_copy = [&](const Tensor& t) {
    Tensor c = Tensor::empty(t.shape(), t.dtype(), host_arena_);
    std::memcpy(c.raw(), t.raw(), t.bytes());
    return c;
  };
  const std::vector<std::vector<std::int64_t>> cases = {{0, 300, 7, 0, 129, 64, 1, 33, 0, 90},
                                                        {0, 50, 0, 21}};
  for (const std::vector<std::int64_t>& counts : cases)
    for (auto [in, out] : {std::pair<std::int64_t, std::int64_t>{256, 192}, {33, 17}})
      for (DType dtype : kFloatTypes) {
        const std::int64_t rows = std::accumulate(counts.begin(), counts.end(), std::int64_t{0});
        const std::string what = std::to_string(counts.size()) + " groups of " +
                                 std::to_string(rows) + " rows, in " + std::to_string(in) +
                                 " out " + std::to_string(out) + " " + dtype_name(dtype);
        const Tensor x = random({rows, in}, dtype), dy = random({rows, out}, dtype);
        const Tensor dx0 = random({rows, in}, dtype);
        std::vector<Tensor> w, dw0;
        for (std::size_t g = 0; g < counts.size(); ++g) {
          w.push_back(random({out, in}, dtype));
          dw0.push_back(random({out, in}));
        }
        const Tensor gx = up(x, dtype), gdy = up(dy, dtype);
        std::vector<Tensor> gw;
        std::vector<const Tensor*> w_gpu, w_cpu;
        for (std::size_t g = 0; g < counts.size(); ++g) gw.push_back(up(w[g], dtype));
        for (std::size_t g = 0; g < counts.size(); ++g) {
          w_gpu.push_back(&gw[g]);
          w_cpu.push_back(&w[g]);
        }
        struct Results {
          Tensor y, dx;
          std::vector<Tensor> dw;
        };
        auto run = [&](int streams) {
          backend.set_expert_streams(streams);
          EXPECT_EQ(backend.expert_streams(), streams);
          Results r;
          r.y = poisoned({rows, out}, dtype);
          r.dx = up(dx0, dtype);
          std::vector<Tensor*> dw_ptrs;
          for (std::size_t g = 0; g < counts.size(); ++g) r.dw.push_back(up(dw0[g], DType::f32));
          for (std::size_t g = 0; g < counts.size(); ++g) dw_ptrs.push_back(&r.dw[g]);
          backend.grouped_matmul(gx, w_gpu, counts, true, r.y);
          backend.grouped_matmul(gdy, w_gpu, counts, false, r.dx, 0.5f, 1.0f);
          backend.grouped_matmul_weight_grad(gdy, gx, counts, dw_ptrs);
          return r;
        };
        Results one = run(1);
        Results four = run(4);
        EXPECT_EQ(differing_elements(down(four.y), down(one.y)), 0) << what << " forward";
        EXPECT_EQ(differing_elements(down(four.dx), down(one.dx)), 0) << what << " input gradient";
        for (std::size_t g = 0; g < counts.size(); ++g)
          EXPECT_EQ(differing_elements(down(four.dw[g]), down(one.dw[g])), 0)
              << what << " weight gradient of group " << g;

        Tensor y = Tensor::empty({rows, out}, DType::f32, host_arena_);
        Tensor dx = host_copy(dx0);
        std::vector<Tensor> dw;
        std::vector<Tensor*> dw_cpu;
        for (std::size_t g = 0; g < counts.size(); ++g) dw.push_back(host_copy(dw0[g]));
        for (std::size_t g = 0; g < counts.size(); ++g) dw_cpu.push_back(&dw[g]);
        cpu_->grouped_matmul(x, w_cpu, counts, true, y);
        cpu_->grouped_matmul(dy, w_cpu, counts, false, dx, 0.5f, 1.0f);
        cpu_->grouped_matmul_weight_grad(dy, x, counts, dw_cpu);
        EXPECT_CLOSE(four.y, y, dtype, what + " forward against the CPU");
        EXPECT_CLOSE(four.dx, dx, dtype, what + " input gradient against the CPU");
        for (std::size_t g = 0; g < counts.size(); ++g)
          EXPECT_CLOSE(
              four.dw[g], dw[g], dtype,
              what + " weight gradient of group " + std::to_string(g) + " against the CPU");
      }
}

// The side streams' workspaces (three more 32 MiB blocks for four streams) come with the first
// weight-gradient call that has two non-empty groups, not with the backend, a matmul, a grouped
// forward (which runs on the compute stream) or a call of one group; one expert stream never
// takes them. Weight gradients that share memory are refused
// on the side streams (they would race), and fewer than one stream is a usage error.
TEST_F(MoeOps, ExpertStreamWorkspacesComeWithTheFirstConcurrentGroupedCall) {
  const std::size_t workspace = std::size_t{32} << 20;
  const std::vector<std::int64_t> one_group = {0, 8, 0}, two_groups = {4, 0, 4};
  Tensor x = up(random({8, 64}, DType::bf16), DType::bf16);
  Tensor w = up(random({32, 64}, DType::bf16), DType::bf16);
  const std::vector<const Tensor*> weights = {&w, &w, &w};
  for (int streams : {1, 4}) {
    cuda::CudaArena arena;
    cuda::CudaBackend backend(arena, /*deterministic=*/true, streams);
    EXPECT_EQ(arena.bytes_in_use(), workspace) << "the compute stream's workspace";
    Tensor y = Tensor::empty({8, 32}, DType::bf16, arena, Device::cuda);
    Tensor dy = Tensor::empty({8, 32}, DType::bf16, arena, Device::cuda);
    Tensor dw[3] = {Tensor::empty({32, 64}, DType::f32, arena, Device::cuda),
                    Tensor::empty({32, 64}, DType::f32, arena, Device::cuda),
                    Tensor::empty({32, 64}, DType::f32, arena, Device::cuda)};
    const std::size_t base = arena.bytes_in_use();
    backend.matmul(x, false, w, true, y, 1.0f, 0.0f);
    backend.grouped_matmul(x, weights, one_group, true, y);
    backend.grouped_matmul(x, weights, two_groups, true, y);
    backend.grouped_matmul_weight_grad(dy, x, one_group, {&dw[0], &dw[1], &dw[2]});
    EXPECT_EQ(arena.bytes_in_use(), base) << streams << " streams, forward and one group";
    backend.grouped_matmul_weight_grad(dy, x, two_groups, {&dw[0], &dw[1], &dw[2]});
    const std::size_t side = streams == 1 ? 0 : static_cast<std::size_t>(streams - 1) * workspace;
    EXPECT_EQ(arena.bytes_in_use(), base + side) << streams << " streams, two groups";
    backend.synchronize();
  }
  cuda::CudaBackend backend(*device_arena_, /*deterministic=*/true, 4);
  Tensor dy = up(random({8, 32}, DType::bf16), DType::bf16);
  Tensor dw = gpu_->zeros({32, 64});
  EXPECT_THROW(backend.grouped_matmul_weight_grad(dy, x, two_groups, {&dw, &dw, &dw}),
               std::logic_error);
  EXPECT_THROW(backend.set_expert_streams(0), InputError);
  EXPECT_THROW(cuda::CudaBackend(*device_arena_, true, 0), InputError);
}

TEST_F(MoeOps, SigmoidForwardAndBackward) {
  for (std::int64_t n : {1, 37, 100003}) {
    Tensor x = random({n}, DType::f32, -8.0f, 8.0f), dy = random({n});
    Tensor y = Tensor::empty({n}, DType::f32, host_arena_);
    Tensor dx = Tensor::empty({n}, DType::f32, host_arena_);
    cpu_->sigmoid_forward(x, y);
    cpu_->sigmoid_backward(dy, y, dx);
    Tensor gy = poisoned({n}, DType::f32), gdx = poisoned({n}, DType::f32);
    gpu_->sigmoid_forward(up(x), gy);
    gpu_->sigmoid_backward(up(dy), gy, gdx);
    EXPECT_CLOSE(gy, y, DType::f32, "sigmoid n " + std::to_string(n));
    EXPECT_CLOSE(gdx, dx, DType::f32, "sigmoid backward n " + std::to_string(n));
  }
}

}  // namespace
}  // namespace metamorph::gpu_test

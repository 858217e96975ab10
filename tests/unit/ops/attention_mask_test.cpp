// AttentionMask::allows for block diffusion against an independent block-by-block construction,
// and the kernels' key ranges against allows() for every mask kind.
#include <gtest/gtest.h>

#include <vector>

#include "runtime/backends/cpu/attention_key_ranges.hpp"
#include "runtime/core/attention_mask.hpp"

namespace metamorph {
namespace {

// The BD3-LM [x_t ; x_0] rule, filled one (query block, key block) rectangle at a time.
std::vector<std::vector<bool>> block_diffusion_by_blocks(std::int64_t n, std::int64_t block) {
  const std::int64_t total = 2 * n, blocks = (n + block - 1) / block;
  std::vector<std::vector<bool>> allowed(static_cast<std::size_t>(total),
                                         std::vector<bool>(static_cast<std::size_t>(total)));
  auto fill = [&](std::int64_t q_lo, std::int64_t q_hi, std::int64_t k_lo, std::int64_t k_hi) {
    for (std::int64_t q = q_lo; q < q_hi; ++q)
      for (std::int64_t k = k_lo; k < k_hi; ++k)
        allowed[static_cast<std::size_t>(q)][static_cast<std::size_t>(k)] = true;
  };
  for (std::int64_t qb = 0; qb < blocks; ++qb) {
    const std::int64_t lo = qb * block, hi = std::min(n, lo + block);
    for (std::int64_t kb = 0; kb < blocks; ++kb) {
      const std::int64_t klo = kb * block, khi = std::min(n, klo + block);
      if (kb == qb) fill(lo, hi, klo, khi);                  // noisy block sees itself
      if (kb < qb) fill(lo, hi, n + klo, n + khi);           // and the clean blocks before it
      if (kb <= qb) fill(n + lo, n + hi, n + klo, n + khi);  // clean: block-causal
    }
  }
  return allowed;
}

TEST(AttentionMask, BlockDiffusionMatchesBlockByBlockConstruction) {
  for (std::int64_t n : {1, 4, 7, 12, 13}) {
    for (std::int64_t block : {1, 2, 3, 4, 5, 16}) {
      AttentionMask mask;
      mask.kind = MaskKind::block_diffusion;
      mask.block_size = block;
      mask.clean_offset = n;
      const auto expected = block_diffusion_by_blocks(n, block);
      for (std::int64_t q = 0; q < 2 * n; ++q)
        for (std::int64_t k = 0; k < 2 * n; ++k)
          ASSERT_EQ(mask.allows(q, k),
                    expected[static_cast<std::size_t>(q)][static_cast<std::size_t>(k)])
              << "n " << n << " block " << block << " query " << q << " key " << k;
    }
  }
}

TEST(AttentionMask, KernelKeyRangesAgreeWithAllows) {
  std::vector<AttentionMask> masks;
  for (MaskKind kind : {MaskKind::causal, MaskKind::full})
    masks.push_back(AttentionMask{kind, 1, 0});
  for (std::int64_t block : {1, 3, 4, 8}) {
    masks.push_back(AttentionMask{MaskKind::block_causal, block, 0});
    for (std::int64_t n : {0, 5, 7, 9, 12}) {
      masks.push_back(AttentionMask{MaskKind::block_diffusion, block, n});
      masks.push_back(AttentionMask{MaskKind::block_diffusion_local, block, n});
    }
  }
  for (const AttentionMask& mask : masks) {
    for (std::int64_t keys : {0, 1, 6, 14, 18}) {
      for (std::int64_t query = 0; query < 20; ++query) {
        const AllowedKeys ranges = allowed_keys(mask, query, keys);
        EXPECT_TRUE(ranges.first.empty() || ranges.second.empty() ||
                    ranges.first.end <= ranges.second.begin);
        for (std::int64_t key = 0; key < keys; ++key)
          ASSERT_EQ(ranges.first.contains(key) || ranges.second.contains(key),
                    mask.allows(query, key))
              << "kind " << static_cast<int>(mask.kind) << " block " << mask.block_size
              << " clean_offset " << mask.clean_offset << " keys " << keys << " query " << query
              << " key " << key;
      }
    }
  }
}

// Every (query, key) a mask allows has its query inside queries_seeing() of any key span holding
// the key, and the spans are tight where the kernels rely on them.
TEST(AttentionMask, QueriesSeeingAKeySpanCoverEveryAllowedQuery) {
  std::vector<AttentionMask> masks{AttentionMask{MaskKind::causal, 1, 0},
                                   AttentionMask{MaskKind::full, 1, 0}};
  for (std::int64_t block : {1, 3, 4, 8}) {
    masks.push_back(AttentionMask{MaskKind::block_causal, block, 0});
    for (std::int64_t n : {0, 5, 7, 9, 12}) {
      masks.push_back(AttentionMask{MaskKind::block_diffusion, block, n});
      masks.push_back(AttentionMask{MaskKind::block_diffusion_local, block, n});
    }
  }
  for (const AttentionMask& mask : masks)
    for (std::int64_t offset : {0, 3})
      for (std::int64_t k_begin = 0; k_begin < 24; ++k_begin)
        for (std::int64_t k_end = k_begin + 1; k_end <= 24; ++k_end) {
          const AllowedKeys queries = queries_seeing(mask, k_begin, k_end, 20, offset);
          for (std::int64_t q = 0; q < 20; ++q)
            for (std::int64_t key = k_begin; key < k_end; ++key) {
              if (!mask.allows(offset + q, key)) continue;
              ASSERT_TRUE(queries.first.contains(q) || queries.second.contains(q))
                  << "kind " << static_cast<int>(mask.kind) << " block " << mask.block_size
                  << " clean_offset " << mask.clean_offset << " offset " << offset << " keys ["
                  << k_begin << ", " << k_end << ") query " << q;
            }
        }
  // Tight where it matters: block diffusion's remainder, keys 16..24 of n = 16, blocks of 8 (the
  // clean block 0): noisy block 1 (its first 7 queries) and clean block 0's first 7 queries.
  const AllowedKeys local =
      queries_seeing(AttentionMask{MaskKind::block_diffusion_local, 8, 16}, 16, 24, 32, 0);
  EXPECT_EQ(local.first.begin, 8);
  EXPECT_EQ(local.first.end, 15);
  EXPECT_EQ(local.second.begin, 16);
  EXPECT_EQ(local.second.end, 23);
}

// The CUDA backend's decomposition of block diffusion: x_0 over x_0 causal, x_t over x_0 causal
// a block behind, and block_diffusion_local. Every allowed pair in exactly one part, no other pair.
TEST(AttentionMask, BlockDiffusionIsTwoCausalPartsAndTheLocalRemainder) {
  for (std::int64_t n : {1, 4, 7, 12, 13}) {
    for (std::int64_t block : {1, 2, 3, 4, 5, 16}) {
      const AttentionMask whole{MaskKind::block_diffusion, block, n};
      const AttentionMask local{MaskKind::block_diffusion_local, block, n};
      for (std::int64_t q = 0; q < 2 * n; ++q)
        for (std::int64_t k = 0; k < 2 * n; ++k) {
          const bool clean_causal = q >= n && k >= n && k <= q;
          const bool shifted_causal = q < n && k >= n && k - n <= q - block;
          const int parts = int{clean_causal} + int{shifted_causal} + int{local.allows(q, k)};
          ASSERT_EQ(parts, whole.allows(q, k) ? 1 : 0)
              << "n " << n << " block " << block << " query " << q << " key " << k;
        }
    }
  }
}

}  // namespace
}  // namespace metamorph

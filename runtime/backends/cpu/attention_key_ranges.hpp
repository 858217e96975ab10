#pragma once
// The keys a query may attend to, as at most two intervals, so attention kernels touch only the
// key tiles that can contribute. Block diffusion needs two: the query's own noisy block and the
// clean prefix before it; every other mask kind needs one. Tests check these ranges element by
// element against AttentionMask::allows, the single definition of every mask. The CUDA kernels
// use the same functions on the device.
#include <algorithm>
#include <cstdint>

#include "runtime/core/attention_mask.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

struct KeyRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;  // exclusive
  MM_HOST_DEVICE bool empty() const { return end <= begin; }
  MM_HOST_DEVICE std::int64_t size() const { return empty() ? 0 : end - begin; }
  MM_HOST_DEVICE bool contains(std::int64_t key) const { return key >= begin && key < end; }
};

struct AllowedKeys {
  KeyRange first;   // the only range, or block diffusion's noisy block
  KeyRange second;  // block diffusion's clean blocks; empty for the other kinds
};

// Throws InputError for a mask no kernel can evaluate (block size < 1, negative clean offset).
inline void validate_mask(const AttentionMask& mask) {
  const bool diffusion =
      mask.kind == MaskKind::block_diffusion || mask.kind == MaskKind::block_diffusion_local;
  const bool blocked = mask.kind == MaskKind::block_causal || diffusion;
  require(!blocked || mask.block_size >= 1, "attention mask block size ", mask.block_size,
          " must be at least 1");
  require(!diffusion || mask.clean_offset >= 0, "block-diffusion clean offset ", mask.clean_offset,
          " must be >= 0");
}

MM_HOST_DEVICE inline KeyRange clamped_range(std::int64_t begin, std::int64_t end,
                                             std::int64_t num_keys) {
  KeyRange r;
  r.begin = std::clamp<std::int64_t>(begin, 0, num_keys);
  r.end = std::clamp<std::int64_t>(end, r.begin, num_keys);
  return r;
}

// Keys in [0, num_keys) that `query` (a position in the key sequence, >= 0) may attend to.
MM_HOST_DEVICE inline AllowedKeys allowed_keys(const AttentionMask& mask, std::int64_t query,
                                               std::int64_t num_keys) {
  AllowedKeys keys;
  const std::int64_t block = mask.block_size;
  switch (mask.kind) {
    case MaskKind::causal:
      keys.first = clamped_range(0, query + 1, num_keys);
      break;
    case MaskKind::full:
      keys.first = clamped_range(0, num_keys, num_keys);
      break;
    case MaskKind::block_causal:
      keys.first = clamped_range(0, (query / block + 1) * block, num_keys);
      break;
    case MaskKind::block_diffusion: {
      const std::int64_t n = mask.clean_offset;
      if (query < n) {
        const std::int64_t qb = query / block;
        keys.first = clamped_range(qb * block, std::min((qb + 1) * block, n), num_keys);
        keys.second = clamped_range(n, n + qb * block, num_keys);
      } else {
        const std::int64_t qb = (query - n) / block;
        keys.second = clamped_range(n, n + (qb + 1) * block, num_keys);
      }
      break;
    }
    case MaskKind::block_diffusion_local: {
      const std::int64_t n = mask.clean_offset;
      if (query < n) {
        const std::int64_t qb = query / block;
        keys.first = clamped_range(qb * block, std::min((qb + 1) * block, n), num_keys);
        keys.second = clamped_range(n + std::max<std::int64_t>(query - block + 1, 0),
                                    n + qb * block, num_keys);
      } else {
        const std::int64_t qb = (query - n) / block;
        keys.second = clamped_range(query + 1, n + (qb + 1) * block, num_keys);
      }
      break;
    }
  }
  return keys;
}

// The queries (indices in [0, num_queries), at positions q_offset + index) that may attend to
// some key of [k_begin, k_end), as at most two intervals: a superset of the exact set, tight
// enough that a kernel streaming query tiles for a key tile can skip the tiles outside it without
// evaluating each row's keys. Block diffusion's noisy queries land in `first`, its clean ones in
// `second`.
MM_HOST_DEVICE inline AllowedKeys queries_seeing(const AttentionMask& mask, std::int64_t k_begin,
                                                 std::int64_t k_end, std::int64_t num_queries,
                                                 std::int64_t q_offset) {
  AllowedKeys queries;
  if (k_end <= k_begin) return queries;
  auto span = [&](std::int64_t begin, std::int64_t end) {
    return clamped_range(begin - q_offset, end - q_offset, num_queries);
  };
  const std::int64_t block = mask.block_size, unbounded = q_offset + num_queries;
  switch (mask.kind) {
    case MaskKind::causal:
      queries.first = span(k_begin, unbounded);
      break;
    case MaskKind::full:
      queries.first = span(q_offset, unbounded);
      break;
    case MaskKind::block_causal:
      queries.first = span(k_begin / block * block, unbounded);
      break;
    case MaskKind::block_diffusion:
    case MaskKind::block_diffusion_local: {
      const bool local = mask.kind == MaskKind::block_diffusion_local;
      const std::int64_t n = mask.clean_offset;
      std::int64_t noisy_begin = unbounded, noisy_end = 0;
      auto add_noisy = [&](std::int64_t begin, std::int64_t end) {
        if (end <= begin) return;
        noisy_begin = std::min(noisy_begin, begin);
        noisy_end = std::max(noisy_end, end);
      };
      if (k_begin < n) {  // noisy keys: the noisy queries of their blocks
        const std::int64_t last = std::min(k_end, n) - 1;
        add_noisy(k_begin / block * block, std::min(n, (last / block + 1) * block));
      }
      if (k_end > n) {  // clean keys j: noisy queries of later blocks, clean ones of this or later
        const std::int64_t j0 = std::max(k_begin, n) - n, j1 = k_end - n;
        add_noisy((j0 / block + 1) * block, local ? std::min(n, j1 - 1 + block) : n);
        queries.second = span(n + j0 / block * block, local ? n + j1 - 1 : unbounded);
      }
      queries.first = noisy_begin < noisy_end ? span(noisy_begin, noisy_end) : KeyRange{};
      break;
    }
  }
  return queries;
}

}  // namespace metamorph

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
  const bool blocked =
      mask.kind == MaskKind::block_causal || mask.kind == MaskKind::block_diffusion;
  require(!blocked || mask.block_size >= 1, "attention mask block size ", mask.block_size,
          " must be at least 1");
  require(mask.kind != MaskKind::block_diffusion || mask.clean_offset >= 0,
          "block-diffusion clean offset ", mask.clean_offset, " must be >= 0");
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
  }
  return keys;
}

}  // namespace metamorph

#pragma once
// Which keys a query may attend to. Attention kernels take a mask *kind*, never a dense mask
// tensor, so they can skip whole tiles; `allows` is the one definition every kernel and test
// agrees with.
#include <cstdint>

// Mask logic is shared with device kernels: nvcc compiles these functions for both sides.
#if defined(__CUDACC__)
#define MM_HOST_DEVICE __host__ __device__
#else
#define MM_HOST_DEVICE
#endif

namespace metamorph {

enum class MaskKind {
  causal,           // key <= query
  full,             // every key
  block_causal,     // block(key) <= block(query), blocks of `block_size`
  block_diffusion,  // [x_t ; x_0] of total length 2n (BD3-LM): see allows()
  // The pairs of block_diffusion that two causal attentions leave out: x_0 over x_0 (key <=
  // query) and x_t over x_0 shifted by a block (clean key <= noisy query - block). The CUDA
  // backend runs those two on cuDNN and this remainder, a few keys a row, on its own kernels.
  block_diffusion_local,
};

struct AttentionMask {
  MaskKind kind = MaskKind::causal;
  std::int64_t block_size = 1;    // block_causal, block_diffusion
  std::int64_t clean_offset = 0;  // block_diffusion: n, where the clean half x_0 starts

  // Query and key are positions in the attention's own sequence.
  MM_HOST_DEVICE bool allows(std::int64_t query, std::int64_t key) const {
    switch (kind) {
      case MaskKind::causal:
        return key <= query;
      case MaskKind::full:
        return true;
      case MaskKind::block_causal:
        return key / block_size <= query / block_size;
      case MaskKind::block_diffusion:
        return block_diffusion_allows(query, key);
      case MaskKind::block_diffusion_local:
        if (!block_diffusion_allows(query, key)) return false;
        if (query >= clean_offset) return key > query;
        return key < clean_offset || key - clean_offset > query - block_size;
    }
    return false;
  }

 private:
  MM_HOST_DEVICE bool block_diffusion_allows(std::int64_t query, std::int64_t key) const {
    const bool query_noisy = query < clean_offset;
    const bool key_noisy = key < clean_offset;
    const std::int64_t qb = (query_noisy ? query : query - clean_offset) / block_size;
    const std::int64_t kb = (key_noisy ? key : key - clean_offset) / block_size;
    if (query_noisy) return key_noisy ? kb == qb : kb < qb;
    return !key_noisy && kb <= qb;
  }
};

}  // namespace metamorph

#pragma once
// The operation graphs of cuDNN's fused attention, written against the backend API: the
// training forward (out and the softmax statistics) and the backward (dq, dk, dv), for bf16
// q/k/v with GQA and an optional causal mask. cuDNN's fused engines recognise the attention by
// the shape of the graph, so the graphs follow the pattern cuDNN documents for its flash
// attention: Q.K^T, scale, mask, softmax with stats, .V; and for the backward the dO.O row sums,
// the recomputed probabilities and three products. A graph is finalised once per shape into an
// execution plan (cudnn_attention.cpp caches them).
#include "runtime/backends/cuda/cudnn_descriptor.hpp"

#if METAMORPH_HAVE_CUDNN_HEADERS
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace metamorph::cuda {

// The tensors the caller binds at execution, by unique id.
enum SdpaUid : std::int64_t {
  kUidQ = 1,
  kUidK = 2,  // described as K^T [b, hk, d, s]
  kUidV = 3,  // V in the forward, V^T [b, hk, d, s] in the backward
  kUidO = 4,
  kUidStats = 5,  // f32 [b, h, s, 1]: max + log(sum exp) of the scaled scores, i.e. our lse
  kUidDO = 6,
  kUidDQ = 7,
  kUidDK = 8,
  kUidDV = 9,
  kUidScale = 10,       // f32 by value
  kUidMaskValue = 11,   // f32 by value: what masked scores become
  kUidOne = 12,         // f32 by value: 1
  kUidSoftmaxSum = 13,  // f32 [b, h, s, 1] scratch: sum over d of dO * O
  kUidDQAccum = 14,     // f32 [b, h, s, d] scratch, zeroed: the non-deterministic dQ path
};

struct SdpaGraphSpec {
  std::int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, dim = 0;
  // Rows a batch entry of every bound tensor spans (>= seq: the call may attend over a slice).
  std::int64_t storage_seq = 0;
  bool causal = true;
  bool backward = false;
  // Backward only: dQ written by the deterministic engine (no f32 accumulator added to with
  // atomics), and engines that report themselves non-deterministic are skipped.
  bool deterministic = true;
};

struct SdpaPlan {
  std::vector<std::unique_ptr<CudnnDescriptor>> keep_alive;  // graph, engine config, plan
  const CudnnDescriptor* plan = nullptr;
  std::int64_t workspace_bytes = 0;
  bool uses_dq_accumulator = false;
  std::string engine;  // which heuristic choice finalised, for the log
};

// The score of a masked pair (bound to kUidMaskValue): -inf, or the lowest float before cuDNN
// 9.10, which wanted a finite value there (as the frontend library does for those versions).
float sdpa_mask_value(const CudnnLibrary& lib);

// Builds, finalises and plans the graph; throws CudnnError naming the failed step. `trace`
// receives one line per step (may be empty). Without a handle (no GPU) it stops after
// finalising the operation graph, with no plan: the descriptors alone are checked.
std::unique_ptr<SdpaPlan> build_sdpa_plan(const CudnnLibrary& lib, cudnnHandle_t handle,
                                          const SdpaGraphSpec& spec,
                                          const std::function<void(const std::string&)>& trace);

}  // namespace metamorph::cuda
#endif

#pragma once
// cuDNN's fused flash attention as the CUDA backend's fast path for training shapes: bf16
// q/k/v/out, f32 lse, head_dim 64 or 128, GQA, causal or full mask, no query offset, sq == sk.
// Each (shape, mask, direction) graph is planned once and reused. A call outside that scope, or
// one whose graph cuDNN does not plan, returns false and the backend runs its own kernels
// (METAMORPH_CUDNN_LOG=1 prints why, once per shape). cuDNN's statistics are our lse (the
// natural log-sum-exp of the scaled scores, max + log(sum exp(s - max))), so either forward
// pairs with either backward.
//
// Determinism: in deterministic mode the backward graph is the one that writes dQ without an
// atomically added f32 accumulator (the cuDNN frontend's deterministic choice on Hopper), and
// engines marked non-deterministic are skipped; otherwise the faster accumulator graph.
#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "runtime/core/arena.hpp"
#include "runtime/core/attention_mask.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph::cuda {

struct CudnnLibrary;

// Which attention calls may go to cuDNN; tests force each path.
struct CudnnAttentionUse {
  bool forward = true;
  bool backward = true;
};

// One attention over views into larger tensors, bf16: `seq` rows starting at each pointer, the
// rows of one batch entry `storage_seq` apart from the next one's (q, out, dout, dq are
// [batch, storage_seq, heads, dim]; k, v, dk, dv [batch, storage_seq, kv_heads, dim]). stats is
// packed [batch, heads, seq]. The forward writes out and stats; the backward reads out, stats and
// dout and writes dq, dk, dv.
struct CudnnAttentionViews {
  std::int64_t batch = 0, seq = 0, storage_seq = 0, heads = 0, kv_heads = 0, dim = 0;
  bool causal = true;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* stats = nullptr;
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};

// Calls cuDNN ran, and calls it declined (each such call ran our kernels).
struct CudnnAttentionCounts {
  std::int64_t forward = 0, backward = 0, declined = 0;
};

class CudnnAttention {
 public:
  CudnnAttention(Arena& arena, bool deterministic);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Run the call on cuDNN and return true, or return false having written nothing. Shapes are
  // already validated by the backend.
  bool forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
               float scale, Tensor& out, Tensor& lse, std::int64_t q_offset);
  bool backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                const Tensor& out, const Tensor& lse, const AttentionMask& mask, float scale,
                Tensor& dq, Tensor& dk, Tensor& dv, std::int64_t q_offset);

  // The same on views (block diffusion runs as two of them, cuda_block_diffusion_attention.cu).
  // Returns false, having written nothing, when cuDNN does not take the call.
  bool forward(const CudnnAttentionViews& views, float scale);
  bool backward(const CudnnAttentionViews& views, float scale);
  // Whether cuDNN has a plan for views of this shape (planned now if new; the pointers are not
  // looked at): a caller about to do work of its own beside a call can ask first. Declines, with
  // the reason, when not.
  bool has_plan(const CudnnAttentionViews& views, bool backward);

  void set_use(CudnnAttentionUse use) { use_ = use; }
  CudnnAttentionUse use() const { return use_; }
  CudnnAttentionCounts counts() const { return counts_; }
  // Why the most recent declined call went to our kernels ("" if none was declined).
  const std::string& last_reason() const { return last_reason_; }
  // Print every graph step to stderr (the probe; also on with METAMORPH_CUDNN_LOG=1).
  void set_trace(bool on) { trace_ = on; }

 private:
  struct State;      // cuDNN handle and the plan cache (cuDNN types stay out of this header)
  struct PlanEntry;  // one shape's plan, or why it has none (defined with State)
  bool decline(const std::string& shape, const std::string& reason);
  // The plan cache's entry for the views (planned now if new), or null, having declined the call
  // (described by `shape`) with the reason: cuDNN not loaded, not started, or no plan.
  PlanEntry* planned(const CudnnAttentionViews& views, bool backward, const std::string& shape);
  // Creates the handle on first use; false (reason in state_error_) when cuDNN cannot start.
  bool ensure_state(const CudnnLibrary& lib);

  Arena& arena_;
  bool deterministic_;
  bool trace_;
  CudnnAttentionUse use_;
  CudnnAttentionCounts counts_;
  std::string last_reason_;
  std::set<std::string> logged_;  // shapes whose fallback was printed
  std::unique_ptr<State> state_;
  std::string state_error_;
};

}  // namespace metamorph::cuda

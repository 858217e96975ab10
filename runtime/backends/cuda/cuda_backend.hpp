#pragma once
// The GPU backend: every Backend op on device tensors (Device::cuda). Activations may be bf16 or
// f32; all arithmetic accumulates in f32 (reductions that return a scalar, in double); AdamW
// state is f32. GEMMs go through cuBLASLt, the rest are this backend's own kernels. Everything
// runs on the legacy default stream but the experts' weight-gradient GEMMs, which fork to side
// streams and join back within the call (cuda_expert_streams.hpp), and every reduction sums in a
// fixed order, so two runs on the same inputs give the same bits (no float atomics anywhere).
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "runtime/backends/cuda/cuda_arena.hpp"
#include "runtime/backends/cuda/cudnn_attention.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph::cuda {

class MatmulCache;
class ExpertStreams;
struct GemmLane;

class CudaBackend final : public Backend {
 public:
  // `arena` must hand out device memory (a CudaArena). Takes the cuBLASLt workspace from it.
  // `deterministic`: every reduction in a fixed order, so that a run repeats bit for bit (and a
  // resumed run continues its curve exactly); false lets the attention backward add dQ up with
  // float atomics, which is faster (docs/benchmarks.md) but varies in the last bits.
  // `expert_streams`: see set_expert_streams.
  static constexpr int kDefaultExpertStreams = 4;
  explicit CudaBackend(Arena& arena, bool deterministic = true,
                       int expert_streams = kDefaultExpertStreams);
  ~CudaBackend() override;
  Device device() const override { return Device::cuda; }
  Arena& arena() override { return arena_; }
  DType activation_dtype() const override { return DType::bf16; }
  // Synchronous copies through cuda::to_host / to_device; host copies come from a host arena
  // of this backend's own (they are not device memory, so not in the device peak).
  Tensor host_empty(const Shape& shape, DType dtype) override {
    return Tensor::empty(shape, dtype, host_arena_);
  }
  Tensor to_host(const Tensor& x, DType dtype) override;
  Tensor from_host(const Tensor& host, DType dtype) override;

  // Waits for every queued kernel (timings, host reads).
  void synchronize() override;
  // CUDA events on the compute stream (cuda_event_clock.cu).
  std::unique_ptr<DeviceClock> make_clock() override;

  void fill(Tensor& x, float value) override;
  // Also converts between f32 and bf16 when the dtypes differ (e.g. bf16 weights from f32
  // masters); the CPU backend requires equal dtypes.
  void copy(const Tensor& src, Tensor& dst) override;
  void axpy(float alpha, const Tensor& x, Tensor& y) override;
  void scale(Tensor& x, float alpha) override;
  double sum_squares(const Tensor& x) override;
  void sum_squares_into(const Tensor& x, Tensor& sums, std::int64_t index) override;
  bool all_finite(const Tensor& x) override;
  void add_bias(Tensor& x, const Tensor& bias) override;
  void bias_backward(const Tensor& dy, Tensor& dbias) override;

  // f32 x f32 -> f32 (exact f32 GEMM, no TF32) or bf16 x bf16 -> f32 or bf16 (tensor cores, f32
  // accumulation).
  void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
              float beta) override;

  // The experts' weight-gradient GEMMs (cuda_grouped_matmul.cu): every non-empty group is the GEMM
  // matmul would run for it, with the same bits, round-robin on expert_streams() side streams at
  // the same time (their inner dimension is a group's rows: one alone leaves SMs idle at its
  // tail); their tensors must be distinct (checked). The forward and input-gradient grouped GEMMs
  // are the Backend default, one expert after another on the compute stream (faster, measured).
  void grouped_matmul_weight_grad(const Tensor& dy, const Tensor& x,
                                  const std::vector<std::int64_t>& counts,
                                  const std::vector<Tensor*>& dweights) override;
  // How many side streams the weight-gradient GEMMs spread over; 1 runs them one after another on
  // the compute stream (matmul per group, in group order). The streams and their cuBLASLt
  // workspaces (streams - 1 more 32 MiB blocks from the arena: the first side stream borrows the
  // compute stream's, which waits meanwhile) are made by the first weight-gradient call with at
  // least two non-empty groups, so a dense model never holds them. Throws InputError below 1.
  void set_expert_streams(int streams);
  int expert_streams() const { return expert_streams_; }

  void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override;

  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                       Tensor& rstd) override;
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override;
  // One pass over the rows with the warp kernels (the bits of the default composition); the
  // composition where those kernels do not take the shape (cuda_norm.cu).
  void add_rmsnorm_forward(const Tensor& x, Tensor& r, const Tensor& w, float eps, Tensor& y,
                           Tensor& rstd) override;
  void rmsnorm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                            const Tensor& residual_grad, Tensor& dx, Tensor& dw) override;

  void rope(Tensor& x, const Tensor& positions, float theta, bool inverse) override;
  void rope_qk(Tensor& q, Tensor& k, const Tensor& positions, float theta, bool inverse) override;

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionMask& mask, float scale, Tensor& out, Tensor& lse,
                         std::int64_t q_offset) override;
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          std::int64_t q_offset) override;

  void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                       Tensor& dup) override;

  double cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                               std::int32_t ignore_index, Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              std::int32_t ignore_index, float grad_scale,
                              Tensor& dlogits) override;

  void embedding_forward_sharded(const Tensor& table, const Tensor& ids, std::int64_t vocab_offset,
                                 Tensor& out) override;
  void embedding_backward_sharded(const Tensor& ids, const Tensor& dout, std::int64_t vocab_offset,
                                  Tensor& dtable) override;
  void row_max(const Tensor& x, Tensor& out) override;
  void cross_entropy_stats(const Tensor& logits, const Tensor& targets, std::int64_t vocab_offset,
                           const Tensor& max, Tensor& sum_exp, Tensor& target_logit) override;
  double cross_entropy_finish(const Tensor& max, const Tensor& sum_exp, const Tensor& target_logit,
                              const Tensor& targets, std::int32_t ignore_index,
                              Tensor& lse) override;
  void cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                      const Tensor& lse, std::int32_t ignore_index,
                                      std::int64_t vocab_offset, float grad_scale,
                                      Tensor& dlogits) override;

  double weighted_cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& weights, std::int32_t ignore_index,
                                        Tensor& lse) override;
  void weighted_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                       const Tensor& lse, const Tensor& weights,
                                       std::int32_t ignore_index, float grad_scale,
                                       Tensor& dlogits) override;
  // Their vocabulary-parallel halves (block diffusion under tensor parallelism).
  double weighted_cross_entropy_finish(const Tensor& max, const Tensor& sum_exp,
                                       const Tensor& target_logit, const Tensor& targets,
                                       const Tensor& weights, std::int32_t ignore_index,
                                       Tensor& lse) override;
  void weighted_cross_entropy_backward_sharded(const Tensor& logits, const Tensor& targets,
                                               const Tensor& lse, const Tensor& weights,
                                               std::int32_t ignore_index, std::int64_t vocab_offset,
                                               float grad_scale, Tensor& dlogits) override;

  // Mixture-of-Experts routing (cuda_moe.cu). Router math in f32 storage with double
  // arithmetic per token; rows f32 or bf16. router_forward copies [E] sums back to the host.
  RouterOutput router_forward(const Tensor& logits, const Tensor& bias,
                              const RouterSpec& spec) override;
  void router_backward(const Tensor& logits, const RouterOutput& routing, const RouterSpec& spec,
                       const Tensor& dgate_rows, const Tensor& slot_row, float loss_scale,
                       Tensor& dlogits) override;
  void moe_permute(const Tensor& expert, const Tensor& gate, const std::vector<std::int64_t>& kept,
                   Tensor& token_index, Tensor& row_gate, Tensor& slot_row) override;
  void moe_combine(const Tensor& rows, const Tensor& token_index, const Tensor& weights,
                   const Tensor& slot_row, Tensor& y, std::int64_t first_row = 0,
                   bool accumulate = true) override;
  void gather_rows(const Tensor& src, const Tensor& index, const Tensor& weights,
                   Tensor& dst) override;
  void row_dot(const Tensor& a, const Tensor& b, Tensor& out) override;
  void sigmoid_forward(const Tensor& x, Tensor& y) override;
  void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx) override;

  // param, m, v f32; grad f32 or bf16.
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                  const AdamWHyper& hyper) override;
  void adamw_step_rounded(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v,
                          const AdamWHyper& hyper, Tensor& value) override;

  // Attention in scope of cuDNN's fused kernels (cudnn_attention.hpp: bf16, head_dim 64/128,
  // causal or full, sq == sk, no offset) goes there when libcudnn.so.9 loads, unless
  // METAMORPH_CUDNN=0; tests and benches force either path per direction.
  void set_cudnn_attention(CudnnAttentionUse use) { cudnn_attention_.set_use(use); }
  CudnnAttention& cudnn_attention() { return cudnn_attention_; }

  // Sum, in a fixed order, of a device vector of doubles (stored in an i64 tensor: DType has no
  // f64); the ops that return a scalar (loss sums, sum of squares) end with it.
  double sum_doubles(const Tensor& values);
  // The same sum written to device memory (`out`), for callers that download several results in
  // one copy.
  void sum_doubles_on_device(const Tensor& values, double* out);

  // Blocks of `threads` threads and `shared` bytes of dynamic shared memory that `kernel` can keep
  // resident on the whole device at once (per-SM occupancy x SMs), for grids that fill the device
  // once and loop over their work; also raises the kernel's dynamic shared memory limit when
  // `shared` is above the default 48 KB. Looked up once per kernel and kept, so that a launch
  // costs no occupancy query.
  unsigned resident_blocks(const void* kernel, int threads, std::size_t shared);

 private:
  // matmul's GEMM on the given stream and workspace (the compute lane for matmul itself).
  void matmul_on(const GemmLane& lane, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                 Tensor& c, float alpha, float beta);
  // Lanes a grouped call of `groups` non-empty groups uses: 1 (the compute stream) below two
  // groups or with one expert stream, else min(groups, expert_streams()).
  int lanes_for(std::size_t groups) const;
  // The side streams, made on first use.
  ExpertStreams& side_streams();

  Arena& arena_;
  bool deterministic_;
  CudaArena host_arena_{CudaArena::Memory::pinned_host};
  std::unique_ptr<MatmulCache> matmuls_;
  int expert_streams_ = 1;
  // Declared after matmuls_ so it goes first: its first lane borrows matmuls_' workspace.
  std::unique_ptr<ExpertStreams> side_streams_;
  CudnnAttention cudnn_attention_;
  std::map<std::tuple<const void*, int, std::size_t>, unsigned> resident_blocks_;
  // Each kernel's dynamic shared memory limit as raised so far: only ever raised, since a kernel
  // launched with several sizes needs the largest (a cached look-up does not raise it again).
  std::map<const void*, std::size_t> shared_limits_;
};

}  // namespace metamorph::cuda

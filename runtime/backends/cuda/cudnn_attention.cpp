#include "runtime/backends/cuda/cudnn_attention.hpp"

#include <cstdio>
#include <map>
#include <tuple>
#include <vector>

#include "runtime/backends/cuda/cuda_check.hpp"
#include "runtime/backends/cuda/cudnn_attention_graph.hpp"
#include "runtime/backends/cuda/cudnn_library.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cuda {

namespace {

// "" when cuDNN's graphs cover the call's shape and mask, else what is outside their scope (the
// pointers' alignment is checked on the views).
std::string out_of_scope(const Tensor& q, const Tensor& k, const AttentionMask& mask,
                         std::int64_t q_offset) {
  if (q.dtype() != DType::bf16) return concat("dtype ", dtype_name(q.dtype()), " (bf16 only)");
  if (q.dim(3) != 64 && q.dim(3) != 128) return concat("head_dim ", q.dim(3), " (64 or 128)");
  if (mask.kind != MaskKind::causal && mask.kind != MaskKind::full)
    return "mask kind (causal and full only)";
  if (q_offset != 0) return concat("query offset ", q_offset, " (0 only)");
  if (q.dim(1) != k.dim(1)) return concat("sq ", q.dim(1), " != sk ", k.dim(1));
  if (q.dim(0) * q.dim(1) * q.dim(2) == 0) return "empty";
  return "";
}

std::string describe(const Tensor& q, const Tensor& k, const AttentionMask& mask, bool backward) {
  const char* kind = mask.kind == MaskKind::causal            ? "causal"
                     : mask.kind == MaskKind::full            ? "full"
                     : mask.kind == MaskKind::block_causal    ? "block-causal"
                     : mask.kind == MaskKind::block_diffusion ? "block-diffusion"
                                                              : "block-diffusion-local";
  return concat(backward ? "backward" : "forward", " b", q.dim(0), " s", q.dim(1), " h", q.dim(2),
                "/", k.dim(2), " d", q.dim(3), " ", kind);
}

}  // namespace

#if METAMORPH_HAVE_CUDNN_HEADERS
struct CudnnAttention::PlanEntry {
  std::unique_ptr<SdpaPlan> plan;  // null when the graph failed
  std::string failure;
};

struct CudnnAttention::State {
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                         std::int64_t, bool, bool>;

  const CudnnLibrary& lib;
  cudnnHandle_t handle = nullptr;
  std::map<Key, PlanEntry> plans;

  explicit State(const CudnnLibrary& library) : lib(library) {
    lib.check(lib.create(&handle), "cudnnCreate");
    // Every kernel of the backend runs on the legacy default stream; so does cuDNN.
    lib.check(lib.set_stream(handle, nullptr), "cudnnSetStream");
  }
  ~State() {
    plans.clear();  // descriptors before the handle
    if (handle != nullptr) lib.destroy(handle);
  }

  PlanEntry& entry(const SdpaGraphSpec& spec, bool trace) {
    const Key key{spec.batch,    spec.seq, spec.storage_seq, spec.heads,
                  spec.kv_heads, spec.dim, spec.causal,      spec.backward};
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    PlanEntry entry;
    auto say = [&](const std::string& line) {
      std::fprintf(stderr, "metamorph cuDNN %s b%ld s%ld of %ld h%ld/%ld d%ld %s: %s\n",
                   spec.backward ? "backward" : "forward", static_cast<long>(spec.batch),
                   static_cast<long>(spec.seq), static_cast<long>(spec.storage_seq),
                   static_cast<long>(spec.heads), static_cast<long>(spec.kv_heads),
                   static_cast<long>(spec.dim), spec.causal ? "causal" : "full", line.c_str());
    };
    try {
      entry.plan = build_sdpa_plan(lib, handle, spec,
                                   trace ? std::function<void(const std::string&)>(say) : nullptr);
    } catch (const CudnnError& e) {
      entry.failure = e.what();
    }
    return plans.emplace(key, std::move(entry)).first->second;
  }
};
#else
struct CudnnAttention::State {};
#endif

CudnnAttention::CudnnAttention(Arena& arena, bool deterministic)
    : arena_(arena), deterministic_(deterministic), trace_(cudnn_log_enabled()) {
  use_.forward = cudnn_allowed_by_env();
  use_.backward = cudnn_allowed_by_env() && cudnn_backward_allowed_by_env();
}

CudnnAttention::~CudnnAttention() = default;

#if METAMORPH_HAVE_CUDNN_HEADERS
bool CudnnAttention::ensure_state(const CudnnLibrary& lib) {
  if (state_ != nullptr) return true;
  if (!state_error_.empty()) return false;  // a handle that failed once is not retried
  try {
    state_ = std::make_unique<State>(lib);
  } catch (const CudnnError& e) {
    state_error_ = e.what();
  }
  return state_ != nullptr;
}
#endif

bool CudnnAttention::decline(const std::string& shape, const std::string& reason) {
  ++counts_.declined;
  last_reason_ = concat(shape, ": ", reason);
  if (cudnn_log_enabled() && logged_.insert(shape).second)
    std::fprintf(stderr, "metamorph: attention %s runs our kernels: %s\n", shape.c_str(),
                 reason.c_str());
  return false;
}

#if METAMORPH_HAVE_CUDNN_HEADERS
namespace {

// Arena memory for one execution, given back when the call has been queued: every later user
// of a reused block runs after it on the same stream.
class Scratch {
 public:
  Scratch(Arena& arena, std::int64_t bytes)
      : arena_(arena), bytes_(static_cast<std::size_t>(bytes)) {
    if (bytes_ > 0) ptr_ = arena_.allocate(bytes_);
  }
  ~Scratch() {
    if (ptr_ != nullptr) arena_.release(ptr_, bytes_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }

 private:
  Arena& arena_;
  std::size_t bytes_;
  void* ptr_ = nullptr;
};

// The graph of a call on views (the rows' storage sets the strides).
SdpaGraphSpec graph_spec(const CudnnAttentionViews& views, bool backward, bool deterministic) {
  SdpaGraphSpec spec;
  spec.batch = views.batch;
  spec.seq = views.seq;
  spec.storage_seq = views.storage_seq;
  spec.heads = views.heads;
  spec.kv_heads = views.kv_heads;
  spec.dim = views.dim;
  spec.causal = views.causal;
  spec.backward = backward;
  spec.deterministic = deterministic;
  return spec;
}

// Binds uids to pointers and runs the plan. By-value scalars point at host floats.
void execute(const CudnnLibrary& lib, cudnnHandle_t handle, const SdpaPlan& plan,
             const std::vector<std::int64_t>& uids, const std::vector<void*>& pointers,
             void* workspace) {
  CudnnDescriptor pack(lib, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
  pack.set_int64s(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, uids)
      .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
           static_cast<std::int64_t>(pointers.size()), pointers.data())
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace)
      .finalize();
  lib.check(lib.execute(handle, plan.plan->get(), pack.get()), "cudnnBackendExecute");
}

}  // namespace
#endif

namespace {

std::string describe_views(const CudnnAttentionViews& v, bool backward) {
  return concat(backward ? "backward" : "forward", " b", v.batch, " s", v.seq, " of ",
                v.storage_seq, " h", v.heads, "/", v.kv_heads, " d", v.dim,
                v.causal ? " causal" : " full");
}

CudnnAttentionViews views_of(const Tensor& q, const Tensor& k, const Tensor& v,
                             const AttentionMask& mask) {
  CudnnAttentionViews views;
  views.batch = q.dim(0);
  views.seq = views.storage_seq = q.dim(1);
  views.heads = q.dim(2);
  views.kv_heads = k.dim(2);
  views.dim = q.dim(3);
  views.causal = mask.kind == MaskKind::causal;
  views.q = q.raw();
  views.k = k.raw();
  views.v = v.raw();
  return views;
}

}  // namespace

bool CudnnAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v,
                             const AttentionMask& mask, float scale, Tensor& out, Tensor& lse,
                             std::int64_t q_offset) {
  if (!use_.forward) return false;
  const std::string scope = out_of_scope(q, k, mask, q_offset);
  if (!scope.empty()) return decline(describe(q, k, mask, false), scope);
  CudnnAttentionViews views = views_of(q, k, v, mask);
  views.out = out.raw();
  views.stats = static_cast<float*>(lse.raw());
  return forward(views, scale);
}

bool CudnnAttention::backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                              float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                              std::int64_t q_offset) {
  if (!use_.backward) return false;
  const std::string scope = out_of_scope(q, k, mask, q_offset);
  if (!scope.empty()) return decline(describe(q, k, mask, true), scope);
  CudnnAttentionViews views = views_of(q, k, v, mask);
  views.out = const_cast<void*>(out.raw());
  views.stats = const_cast<float*>(static_cast<const float*>(lse.raw()));
  views.dout = dout.raw();
  views.dq = dq.raw();
  views.dk = dk.raw();
  views.dv = dv.raw();
  return backward(views, scale);
}

#if METAMORPH_HAVE_CUDNN_HEADERS
namespace {

// "" when every pointer the call reads or writes is 16-byte aligned.
std::string misaligned(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0)
      return "a tensor or view not 16-byte aligned";
  return "";
}

}  // namespace
#endif

#if METAMORPH_HAVE_CUDNN_HEADERS
CudnnAttention::PlanEntry* CudnnAttention::planned(const CudnnAttentionViews& views, bool backward,
                                                   const std::string& shape) {
  const CudnnLibrary* lib = cudnn_library();
  if (lib == nullptr) {
    decline(shape, concat("cuDNN not loaded: ", cudnn_load_error()));
    return nullptr;
  }
  if (!ensure_state(*lib)) {
    decline(shape, state_error_);
    return nullptr;
  }
  PlanEntry& entry = state_->entry(graph_spec(views, backward, deterministic_), trace_);
  if (entry.plan == nullptr) {
    decline(shape, entry.failure);
    return nullptr;
  }
  return &entry;
}
#endif

bool CudnnAttention::has_plan(const CudnnAttentionViews& views, bool backward) {
  const std::string shape = describe_views(views, backward);
#if METAMORPH_HAVE_CUDNN_HEADERS
  return planned(views, backward, shape) != nullptr;
#else
  return decline(shape, concat("cuDNN not loaded: ", cudnn_load_error()));
#endif
}

bool CudnnAttention::forward(const CudnnAttentionViews& views, float scale) {
  if (!use_.forward) return false;
  const std::string shape = describe_views(views, false);
#if METAMORPH_HAVE_CUDNN_HEADERS
  const std::string scope = misaligned({views.q, views.k, views.v, views.out, views.stats});
  if (!scope.empty()) return decline(shape, scope);
  PlanEntry* const entry = planned(views, /*backward=*/false, shape);
  if (entry == nullptr) return false;
  const CudnnLibrary& lib = state_->lib;
  float scale_value = scale, mask_value = sdpa_mask_value(lib);
  std::vector<std::int64_t> uids{kUidQ, kUidK, kUidV, kUidO, kUidStats, kUidScale};
  std::vector<void*> pointers{const_cast<void*>(views.q),
                              const_cast<void*>(views.k),
                              const_cast<void*>(views.v),
                              views.out,
                              views.stats,
                              &scale_value};
  if (views.causal) {
    uids.push_back(kUidMaskValue);
    pointers.push_back(&mask_value);
  }
  try {
    Scratch workspace(arena_, entry->plan->workspace_bytes);
    execute(lib, state_->handle, *entry->plan, uids, pointers, workspace.get());
  } catch (const CudnnError& e) {
    // Nothing was written that our kernels will not overwrite; later calls skip this plan.
    entry->failure = concat("execution failed: ", e.what());
    entry->plan.reset();
    return decline(shape, entry->failure);
  }
  ++counts_.forward;
  return true;
#else
  (void)scale;
  return decline(shape, concat("cuDNN not loaded: ", cudnn_load_error()));
#endif
}

bool CudnnAttention::backward(const CudnnAttentionViews& views, float scale) {
  if (!use_.backward) return false;
  const std::string shape = describe_views(views, true);
#if METAMORPH_HAVE_CUDNN_HEADERS
  const std::string scope = misaligned({views.q, views.k, views.v, views.out, views.stats,
                                        views.dout, views.dq, views.dk, views.dv});
  if (!scope.empty()) return decline(shape, scope);
  PlanEntry* const entry = planned(views, /*backward=*/true, shape);
  if (entry == nullptr) return false;
  const CudnnLibrary& lib = state_->lib;
  float scale_value = scale, mask_value = sdpa_mask_value(lib), one = 1.0f;
  const std::int64_t rows = views.batch * views.heads * views.seq;
  try {
    Scratch workspace(arena_, entry->plan->workspace_bytes);
    Scratch softmax_sum(arena_, rows * static_cast<std::int64_t>(sizeof(float)));
    const std::int64_t accum_bytes =
        entry->plan->uses_dq_accumulator
            ? rows * views.dim * static_cast<std::int64_t>(sizeof(float))
            : 0;
    Scratch accum(arena_, accum_bytes);
    std::vector<std::int64_t> uids{kUidQ,  kUidK,  kUidV,  kUidO,     kUidDO,  kUidStats,
                                   kUidDQ, kUidDK, kUidDV, kUidScale, kUidOne, kUidSoftmaxSum};
    std::vector<void*> pointers{const_cast<void*>(views.q),
                                const_cast<void*>(views.k),
                                const_cast<void*>(views.v),
                                views.out,
                                const_cast<void*>(views.dout),
                                views.stats,
                                views.dq,
                                views.dk,
                                views.dv,
                                &scale_value,
                                &one,
                                softmax_sum.get()};
    if (views.causal) {
      uids.push_back(kUidMaskValue);
      pointers.push_back(&mask_value);
    }
    if (accum_bytes > 0) {
      // cuDNN before 9.6 left zeroing the accumulator to its caller; zeroing it always is cheap.
      MM_CUDA_CHECK(
          cudaMemsetAsync(accum.get(), 0, static_cast<std::size_t>(accum_bytes), nullptr));
      uids.push_back(kUidDQAccum);
      pointers.push_back(accum.get());
    }
    execute(lib, state_->handle, *entry->plan, uids, pointers, workspace.get());
  } catch (const CudnnError& e) {
    entry->failure = concat("execution failed: ", e.what());
    entry->plan.reset();
    return decline(shape, entry->failure);
  }
  ++counts_.backward;
  return true;
#else
  (void)scale;
  return decline(shape, concat("cuDNN not loaded: ", cudnn_load_error()));
#endif
}

}  // namespace metamorph::cuda

// Which attention calls CudnnAttention takes, without a GPU: calls outside cuDNN's scope are
// declined with the reason, forced-off directions are not even considered, and an in-scope call
// on a machine where cuDNN cannot run (no library, or no device for its handle) is declined
// rather than failing, so the backend falls back to its own kernels. Host tensors stand in for
// device ones: no call here reaches an execution.
#include <gtest/gtest.h>

#include <cstdlib>

#include "runtime/backends/cuda/cuda_device.hpp"
#include "runtime/backends/cuda/cudnn_attention.hpp"
#include "runtime/backends/cuda/cudnn_library.hpp"
#include "runtime/core/arena.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cuda {
namespace {

struct Call {
  Shape q, kv;
  DType dtype;
  MaskKind mask;
  std::int64_t q_offset;
  const char* reason;  // part of the decline reason; nullptr: in scope
};

TEST(CudnnAttentionSelection, DeclinesOutOfScopeCallsWithTheReason) {
  Arena arena;
  const Call calls[] = {
      {{1, 64, 4, 64}, {1, 64, 2, 64}, DType::f32, MaskKind::causal, 0, "dtype"},
      {{1, 64, 4, 96}, {1, 64, 2, 96}, DType::bf16, MaskKind::causal, 0, "head_dim"},
      {{1, 64, 4, 64}, {1, 64, 2, 64}, DType::bf16, MaskKind::block_causal, 0, "mask kind"},
      {{1, 8, 4, 64}, {1, 64, 2, 64}, DType::bf16, MaskKind::causal, 56, "query offset"},
      {{1, 32, 4, 128}, {1, 64, 2, 128}, DType::bf16, MaskKind::full, 0, "sq 32 != sk 64"},
      {{2, 64, 4, 128}, {2, 64, 2, 128}, DType::bf16, MaskKind::causal, 0, nullptr},
  };
  for (const Call& c : calls) {
    SCOPED_TRACE(shape_string(c.q));
    if (c.reason == nullptr && device_count() > 0) continue;  // would run on the device
    CudnnAttention attention(arena, /*deterministic=*/true);
    attention.set_use({true, true});
    AttentionMask mask;
    mask.kind = c.mask;
    Tensor q = Tensor::empty(c.q, c.dtype, arena), k = Tensor::empty(c.kv, c.dtype, arena),
           v = Tensor::empty(c.kv, c.dtype, arena), out = Tensor::empty(c.q, c.dtype, arena),
           lse = Tensor::empty({c.q[0], c.q[2], c.q[1]}, DType::f32, arena);
    EXPECT_FALSE(attention.forward(q, k, v, mask, 0.125f, out, lse, c.q_offset));
    EXPECT_FALSE(attention.backward(out, q, k, v, out, lse, mask, 0.125f, out, k, v, c.q_offset));
    EXPECT_EQ(attention.counts().declined, 2);
    EXPECT_EQ(attention.counts().forward + attention.counts().backward, 0);
    if (c.reason != nullptr)
      EXPECT_NE(attention.last_reason().find(c.reason), std::string::npos)
          << attention.last_reason();
    else
      EXPECT_FALSE(attention.last_reason().empty());  // no library, or no device: says which
  }
}

TEST(CudnnAttentionSelection, AForcedOffDirectionIsNotConsidered) {
  Arena arena;
  CudnnAttention attention(arena, /*deterministic=*/false);
  attention.set_use({false, false});
  AttentionMask mask;
  Tensor q = Tensor::empty({1, 16, 2, 64}, DType::f32, arena);
  Tensor lse = Tensor::empty({1, 2, 16}, DType::f32, arena);
  EXPECT_FALSE(attention.forward(q, q, q, mask, 0.125f, q, lse, 0));
  EXPECT_FALSE(attention.backward(q, q, q, q, q, lse, mask, 0.125f, q, q, q, 0));
  EXPECT_EQ(attention.counts().declined, 0);
  EXPECT_TRUE(attention.last_reason().empty());
}

// One batch entry of `seq` rows out of `storage_seq`, 2 heads of 64; no pointers yet.
CudnnAttentionViews views_of_rows(std::int64_t seq, std::int64_t storage_seq) {
  CudnnAttentionViews views;
  views.batch = 1;
  views.seq = seq;
  views.storage_seq = storage_seq;
  views.heads = views.kv_heads = 2;
  views.dim = 64;
  return views;
}

// Block diffusion's parts reach cuDNN as views into larger tensors; a view off a 16-byte boundary
// is declined before anything else is tried.
TEST(CudnnAttentionSelection, DeclinesAMisalignedView) {
  Arena arena;
  CudnnAttention attention(arena, /*deterministic=*/true);
  attention.set_use({true, true});
  Tensor t = Tensor::empty({1, 66, 2, 64}, DType::bf16, arena);
  Tensor stats = Tensor::empty({1, 2, 64}, DType::f32, arena);
  CudnnAttentionViews views = views_of_rows(64, 66);
  views.q = views.k = views.v = static_cast<const std::uint16_t*>(t.raw()) + 1;  // 2 bytes in
  views.out = t.raw();
  views.stats = static_cast<float*>(stats.raw());
  EXPECT_FALSE(attention.forward(views, 0.125f));
  EXPECT_EQ(attention.counts().declined, 1);
  EXPECT_NE(attention.last_reason().find("16-byte"), std::string::npos) << attention.last_reason();
}

// Asked before a caller's own work: without a device (or library) there is no plan, and the
// answer is a decline with its reason, as a call would have been.
TEST(CudnnAttentionSelection, HasNoPlanWhereCudnnCannotRun) {
  if (device_count() > 0) GTEST_SKIP() << "a device is present: cuDNN may plan";
  Arena arena;
  CudnnAttention attention(arena, /*deterministic=*/true);
  const CudnnAttentionViews views = views_of_rows(64, 128);
  for (const bool backward : {false, true}) EXPECT_FALSE(attention.has_plan(views, backward));
  EXPECT_EQ(attention.counts().declined, 2);
  EXPECT_FALSE(attention.last_reason().empty());
}

// METAMORPH_CUDNN_CONFIG: an engine config index, or unset.
TEST(CudnnEnvironment, PreferredConfigIsAnIndexOrUnset) {
  const char* saved = std::getenv("METAMORPH_CUDNN_CONFIG");
  const std::string kept = saved != nullptr ? saved : "";
  unsetenv("METAMORPH_CUDNN_CONFIG");
  EXPECT_EQ(cudnn_preferred_config(), -1);
  setenv("METAMORPH_CUDNN_CONFIG", "2", 1);
  EXPECT_EQ(cudnn_preferred_config(), 2);
  for (const char* bad : {"x", "-1", "2x"}) {
    setenv("METAMORPH_CUDNN_CONFIG", bad, 1);
    EXPECT_THROW(cudnn_preferred_config(), InputError) << bad;
  }
  if (saved != nullptr)
    setenv("METAMORPH_CUDNN_CONFIG", kept.c_str(), 1);
  else
    unsetenv("METAMORPH_CUDNN_CONFIG");
}

}  // namespace
}  // namespace metamorph::cuda

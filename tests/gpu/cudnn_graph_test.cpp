// cuDNN's fused-attention graphs (cudnn_attention_graph.cpp) up to a finalised operation graph,
// which needs the library but no GPU: every tensor, operation and connection is checked by cuDNN
// itself (a wrong dimension or stride fails an operation's finalize). Whether an engine takes the
// graph needs a GPU: tests/gpu/attention_test.cpp and cudnn_probe. Skips where libcudnn.so.9
// does not load.
#include <gtest/gtest.h>

#include "runtime/backends/cuda/cudnn_attention_graph.hpp"
#include "runtime/backends/cuda/cudnn_library.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cuda {
namespace {

TEST(CudnnAttentionGraph, EveryVariantFinalisesItsOperationGraph) {
#if METAMORPH_HAVE_CUDNN_HEADERS
  const CudnnLibrary* lib = cudnn_library();
  if (lib == nullptr) GTEST_SKIP() << "cuDNN not loaded: " << cudnn_load_error();
  for (bool backward : {false, true})
    for (bool causal : {false, true})
      for (bool deterministic : {false, true})
        for (std::int64_t kv_heads : {4, 1})
          for (std::int64_t dim : {64, 128}) {
            SdpaGraphSpec spec;
            spec.batch = 2;
            spec.seq = 100;
            // Views into longer rows (block diffusion's parts) for half of the variants.
            spec.storage_seq = kv_heads == 1 ? 216 : 0;
            spec.heads = 4;
            spec.kv_heads = kv_heads;
            spec.dim = dim;
            spec.causal = causal;
            spec.backward = backward;
            spec.deterministic = deterministic;
            SCOPED_TRACE(concat(backward ? "backward" : "forward", causal ? " causal" : " full",
                                deterministic ? " deterministic" : "", " h4/", kv_heads, " d", dim,
                                " storage ", spec.storage_seq));
            std::unique_ptr<SdpaPlan> plan;
            EXPECT_NO_THROW(plan = build_sdpa_plan(*lib, nullptr, spec, {}));
            ASSERT_NE(plan, nullptr);
            EXPECT_EQ(plan->plan, nullptr);  // no handle, no plan
            EXPECT_EQ(plan->uses_dq_accumulator, backward && !deterministic);
          }
#else
  GTEST_SKIP() << "built without cuDNN headers";
#endif
}

}  // namespace
}  // namespace metamorph::cuda

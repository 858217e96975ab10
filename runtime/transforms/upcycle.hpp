#pragma once
// Scale-out (AquilaMoE's EfficientScale, sparse upcycling): a Mixture-of-Experts model whose
// experts start from a trained dense model's FFN, so the MoE begins where the dense model
// stopped. The maths is in docs/transforms.md, section "Upcycle".
#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"
#include "runtime/transforms/upcycle_options.hpp"

namespace metamorph {

// The upcycled model's parameters: whole (unsharded) tensors of upcycled_config(dense, options),
// zero gradients, no optimizer state. `source` holds the whole tensors of `dense`. Attention,
// norms, embeddings, the head and the FFNs of layers that stay dense are copied unchanged.
// Validates first (InputError).
ParameterSet upcycle_parameters(Backend& backend, const ModelConfig& dense,
                                const ParameterSet& source, const UpcycleOptions& options);

}  // namespace metamorph

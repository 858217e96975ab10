#pragma once
// Parameter creation and initialisation. Every element is drawn from a Philox stream keyed by
// (seed, parameter name) at its *global* element index, so a shard initialises to exactly the
// values the same block has in the unsharded model.
#include <cstdint>

#include "models/expert_parallel.hpp"
#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "models/pipeline_stage.hpp"
#include "models/tensor_parallel.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

// This tensor-parallel rank's shards of every parameter (whole tensors when tp.size == 1),
// values and zero grads allocated, not initialised. Gradients live in one contiguous buffer
// (each grad a slice of it) so data-parallel reductions work on large flat buckets.
// Under pipeline parallelism only the stage's parameters are made; under expert parallelism
// only this rank's experts (split over the expert-TP group instead of the TP group).
ParameterSet make_parameters(Backend& backend, const ModelConfig& config,
                             const TensorParallel& tp = {}, const PipelineStage& stage = {},
                             const ExpertParallel& ep = {});

// Normal(0, initializer_range) for matrices, scaled by 1/sqrt(2 * layers) for the projections
// that write into the residual stream (o_proj, down_proj); ones for norms; zeros for biases.
void init_parameters(ParameterSet& params, const ModelConfig& config, std::uint64_t seed);

// The standard deviation init_parameters uses for `name` (0 for biases, -1 for norm ones).
double init_std(const std::string& name, const ModelConfig& config);

// Fills the local shard of p with N(0, std) at global element indices.
void fill_normal_global(Parameter& p, std::uint64_t seed, double std);

}  // namespace metamorph

#pragma once
// The collectives a training step needs across ranks: scalar sums and the bucketed
// data-parallel gradient all-reduce.
#include <cstdint>

#include "models/parameter.hpp"
#include "parallel/communicator.hpp"

namespace metamorph {

// Sum of one scalar over the group. Carried as f32: token counts are exact below 2^24 and the
// loss is reported, not optimised, so every rank agreeing on the same value is what matters.
double sum_scalar(Communicator& group, double value, Arena& arena);

// Sums every gradient over the data-parallel group, in buckets of at most bucket_elements of
// the flat gradient buffer, all in flight together.
void reduce_flat_gradients(Communicator& dp, ParameterSet& params,
                           std::int64_t bucket_elements = 1 << 22);

}  // namespace metamorph

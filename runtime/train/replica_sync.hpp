#pragma once
// The collectives a training step needs across ranks: scalar sums and the bucketed
// data-parallel gradient all-reduce.
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "models/parameter.hpp"
#include "parallel/communicator.hpp"

namespace metamorph {

// Sum of one scalar over the group. Carried as f32: token counts are exact below 2^24 and the
// loss is reported, not optimised, so every rank agreeing on the same value is what matters.
double sum_scalar(Communicator& group, double value, Arena& arena);
// The largest of one count over the group, exact (i64).
std::int64_t max_count(Communicator& group, std::int64_t value, Arena& arena);

// Sums every gradient over the data-parallel group, in buckets of at most bucket_elements of
// the flat gradient buffer, all in flight together.
void reduce_flat_gradients(Communicator& dp, ParameterSet& params,
                           std::int64_t bucket_elements = 1 << 22);

// Contiguous runs of the flat gradient buffer holding only routed experts' gradients or only
// other ones, in buffer order.
struct GradientRun {
  std::int64_t begin, end;
  bool expert;
};
std::vector<GradientRun> gradient_runs(const ParameterSet& params);

// The same under expert parallelism: routed experts' gradients are summed over `expert_dp` (the
// ranks holding the same experts), every other gradient over `dp`. Each contiguous run of the
// flat buffer goes to its group in buckets; all are in flight together.
void reduce_flat_gradients(Communicator& dp, Communicator& expert_dp, ParameterSet& params,
                           std::int64_t bucket_elements = 1 << 22);

// Data-parallel gradient reduction overlapped with the last micro-batch's backward: the flat
// gradient buffer is laid out in parameter order (embedding, layer 0, ..., final norm, head),
// so the gradients that are final form a growing suffix of it as the backward walks down the
// layers. Each time the suffix has grown by a bucket, its new part is all-reduced in flight;
// finish() reduces what is left, waits for everything and readies the next step.
class OverlappedGradientReduce {
 public:
  // expert_dp, when given, takes the routed experts' part of every bucket (expert parallelism).
  OverlappedGradientReduce(Communicator& dp, ParameterSet& params,
                           std::int64_t bucket_elements = 1 << 20,
                           Communicator* expert_dp = nullptr);
  // Gradients of `layer` and everything after it (num_layers: final norm and head) are final.
  void gradients_ready(std::int64_t layer);
  void finish();

 private:
  void start(std::int64_t begin, std::int64_t end);

  Communicator& dp_;
  Communicator* expert_dp_;
  std::vector<GradientRun> runs_;  // filled when expert_dp_ is given
  ParameterSet& params_;
  std::int64_t bucket_;
  // Flat offset where each layer's gradients begin (key: layer; the final norm and head last).
  std::map<std::int64_t, std::int64_t> layer_start_;
  std::int64_t reduced_from_ = 0;  // [reduced_from_, end) is reduced or in flight
  std::vector<std::unique_ptr<CommRequest>> requests_;
  std::vector<Tensor> buckets_;
};

}  // namespace metamorph

#pragma once
// ZeRO-1 over the data-parallel group: each replica keeps AdamW state for, and updates, only its
// block of rows of every parameter (rows [R*r/d, R*(r+1)/d) of a parameter with R rows, for
// replica r of d). Gradients are reduce-scattered so each replica receives the sum of its own
// rows; after the update the new rows are all-gathered. The blocks are what the checkpoint
// stores as the optimizer shards (Parameter::optim_offset), so a ZeRO-1 checkpoint reshards.
//
// Where the weights are not their own fp32 master (bf16 weights on a GPU), the master is sharded
// too: each replica keeps the fp32 master of its rows only, AdamW updates it and rounds it into
// those rows of the bf16 weights, and the all-gather moves bf16 rows. A replica then holds no
// fp32 copy of the other replicas' rows, so a checkpoint takes every replica's own rows
// (rows_to_write) and a load fills them and all-gathers the weights.
//
// The reduce-scatter runs in buckets of whole parameters, grouped by layer from the last layer
// to the first, so that a bucket can start while the last micro-batch's backward is still
// working on earlier layers (gradients_ready, called from the model's gradients-ready hook).
// Each bucket holds, for every replica r, r's rows of its parameters padded to the largest
// replica's count: reduce-scattering it gives each replica exactly the sums of its own rows,
// the same per-element sums over the same replicas as one reduce-scatter of everything. The
// updated rows are all-gathered in the same buckets, each finished just before the next
// forward reaches its layer (parameters_needed, from the model's parameters-needed hook).
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "models/parameter.hpp"
#include "parallel/communicator.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

class Zero1 {
 public:
  // Sets every covered parameter's optim_offset and allocates its adam_m/adam_v for this
  // replica's rows; a parameter with a separate master keeps only those rows of it (copied from
  // the whole master, which is released). `covers` selects the parameters this instance shards
  // (all when empty): under expert parallelism one instance shards the dense parameters over the
  // DP group and another the routed experts over the expert-DP group. State a rule updates
  // instead of AdamW (trainable == false) is not sharded where it has a master: the rule reads
  // and writes the whole master on every replica.
  // bucket_elements: the gradient elements (all replicas' rows) a bucket collects before it is
  // closed at a layer boundary; 0 makes one bucket of every parameter (nothing overlaps).
  Zero1(Backend& backend, ParameterSet& params, Communicator& dp,
        std::function<bool(const Parameter&)> covers = {}, std::int64_t bucket_elements = 0);

  // During the last micro-batch's backward: the gradients of `layer` and of everything after it
  // (the final norm and head: any larger value) are final. Starts the reduce-scatter of every
  // bucket that now holds only final gradients. The embedding's bucket is never started here
  // (with tied weights its gradient still changes, and pipeline stages sum their copies).
  void gradients_ready(std::int64_t layer);
  // After backward: this replica's rows of every gradient become the sum over the replicas.
  // Starts the buckets gradients_ready did not, waits for all of them and readies the next step.
  void reduce_scatter_gradients();
  std::int64_t bucket_count() const { return static_cast<std::int64_t>(buckets_.size()); }
  // After the optimizer step: every replica's updated rows reach every replica.
  void all_gather_parameters();
  // The same in the buckets, started now and finished as the next forward needs them:
  // parameters_needed(layer) before the forward of `layer` (-1: the embedding) finishes every
  // bucket up to it, finish_all_gather() the rest (call it before anything else reads the
  // weights: a checkpoint, the end of the run). State a rule updates on every replica alike
  // (trainable == false: the router's balancing bias) is not written back: the rule may have
  // changed it since the gather started.
  void start_all_gather();
  void parameters_needed(std::int64_t layer);
  void finish_all_gather();

  // Rows [begin, end) of a parameter with `rows` rows owned by replica r of d.
  static std::pair<std::int64_t, std::int64_t> owned_rows(std::int64_t rows, int r, int d);

  // What a replica writes of a host copy (host_parameters) of a run whose masters are sharded:
  // each covered parameter's own rows (the copy's value is its master's rows, placed at
  // optim_offset), and a parameter kept whole on every replica only from replica 0 (`replica`,
  // or for routed experts `expert_replica` when that is >= 0: their replicas are the expert-DP
  // ranks). Every rank then saves with RankContext::model_replica = optim_replica = 0.
  static ParameterSet rows_to_write(const ParameterSet& host, int replica, int expert_replica = -1);

 private:
  // Covered parameters in parameter order, reduce-scattered and all-gathered together.
  struct Bucket {
    std::vector<Parameter*> params;
    std::int64_t segment = 0;  // elements per replica, padded to the largest
    // The smallest layer of its parameters (-1 for the embedding): final once
    // gradients_ready(layer) has been called with layer <= first_layer.
    std::int64_t first_layer = 0;
    // While in flight: every replica's rows, this replica's sums, and the request.
    Tensor all_rows, own_sums;
    std::unique_ptr<CommRequest> request;
    // The all-gather of the updated rows in flight (own rows, every replica's rows).
    Tensor own_values, all_values;
    std::unique_ptr<CommRequest> gather;
  };
  // Groups the covered parameters into buckets, last layers first.
  void plan_buckets(std::int64_t bucket_elements);
  void start(Bucket& bucket);
  // Waits for a bucket's reduce-scatter and copies this replica's sums into its gradient rows.
  void finish_reduce(Bucket& bucket);
  // Waits for a bucket's all-gather and copies the other replicas' rows into the weights.
  void finish_gather(Bucket& bucket);
  // Copies replica r's rows of the parameters' values (or grads), in parameter order, to (or
  // from) one segment of `segment` elements; a segment's tail past the rows is zero padding.
  void copy_rows(const std::vector<Parameter*>& params, std::int64_t segment, int r, bool values,
                 Tensor& part, bool to_segment);

  Backend& backend_;
  ParameterSet& params_;
  Communicator& dp_;
  std::function<bool(const Parameter&)> covers_;
  std::vector<Parameter*> covered_;  // in parameter order
  std::vector<Bucket> buckets_;      // last layers first
  // Reduce-scatters in flight: buckets_[finished_, started_) (the ones before are copied back).
  std::int64_t started_ = 0, finished_ = 0;
  // All-gathers in flight: buckets_[0, gather_next_], finished from the back (the forward's
  // order: embedding first); -1 when none.
  std::int64_t gather_next_ = -1;
};

}  // namespace metamorph

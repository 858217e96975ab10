#pragma once
// ZeRO-1 over the data-parallel group: each replica keeps AdamW state for, and updates, only its
// block of rows of every parameter (rows [R*r/d, R*(r+1)/d) of a parameter with R rows, for
// replica r of d). Gradients are reduce-scattered so each replica receives the sum of its own
// rows; after the update the new rows are all-gathered. The blocks are what the checkpoint
// stores as the optimizer shards (Parameter::optim_offset), so a ZeRO-1 checkpoint reshards.
#include <cstdint>
#include <functional>
#include <vector>

#include "models/parameter.hpp"
#include "parallel/communicator.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

class Zero1 {
 public:
  // Sets every covered parameter's optim_offset and allocates its adam_m/adam_v for this
  // replica's rows. `covers` selects the parameters this instance shards (all when empty):
  // under expert parallelism one instance shards the dense parameters over the DP group and
  // another the routed experts over the expert-DP group.
  Zero1(Backend& backend, ParameterSet& params, Communicator& dp,
        std::function<bool(const Parameter&)> covers = {});

  // After backward: this replica's rows of every gradient become the sum over the replicas.
  void reduce_scatter_gradients();
  // After the optimizer step: every replica's updated rows reach every replica.
  void all_gather_parameters();

  // Rows [begin, end) of a parameter with `rows` rows owned by replica r of d.
  static std::pair<std::int64_t, std::int64_t> owned_rows(std::int64_t rows, int r, int d);

 private:
  // Copies replica r's rows of every parameter's values (or grads), in parameter order, to
  // (or from) one segment of segment_ elements; a segment's tail past the rows is zero padding.
  void copy_rows(int r, bool values, Tensor& segment, bool to_segment);

  Backend& backend_;
  ParameterSet& params_;
  Communicator& dp_;
  std::function<bool(const Parameter&)> covers_;
  std::int64_t segment_ = 0;  // elements per replica, padded to the largest
};

}  // namespace metamorph

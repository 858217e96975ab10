#pragma once
// The TensorParallel functions the model's layers call (models/tensor_parallel.hpp), over a TP
// group's communicator: blocking sum and max, and the started sum whose wait the backward puts
// after the weight-gradient GEMMs (on NCCL the all-reduce runs on the communicator's stream and
// its wait orders the compute stream behind it; on MPI it is MPI_Iallreduce).
#include "models/tensor_parallel.hpp"
#include "parallel/communicator.hpp"

namespace metamorph {

// `group` must outlive the returned functions.
TensorParallel tensor_parallel_over(Communicator& group);

}  // namespace metamorph

#include "parallel/tensor_parallel_group.hpp"

#include <memory>

namespace metamorph {

TensorParallel tensor_parallel_over(Communicator& group) {
  TensorParallel tp;
  tp.rank = group.rank();
  tp.size = group.size();
  tp.all_reduce_sum = [&group](Tensor& x) { group.all_reduce(x, ReduceOp::sum); };
  tp.all_reduce_max = [&group](Tensor& x) { group.all_reduce(x, ReduceOp::max); };
  tp.start_all_reduce_sum = [&group](Tensor& x) -> std::function<void()> {
    // Shared so the waiting function can be copied (std::function); the request keeps x's
    // storage alive until it completes.
    std::shared_ptr<CommRequest> request = group.start_all_reduce(x, ReduceOp::sum);
    return [request] { request->wait(); };
  };
  return tp;
}

}  // namespace metamorph

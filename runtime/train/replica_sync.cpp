#include "runtime/train/replica_sync.hpp"

#include <algorithm>
#include <vector>

#include "runtime/core/error.hpp"

namespace metamorph {

double sum_scalar(Communicator& group, double value, Arena& arena) {
  Tensor t = Tensor::empty({1}, DType::f32, arena);
  t.data<float>()[0] = static_cast<float>(value);
  group.all_reduce(t, ReduceOp::sum);
  return static_cast<double>(t.data<float>()[0]);
}

void reduce_flat_gradients(Communicator& dp, ParameterSet& params, std::int64_t bucket_elements) {
  MM_ASSERT(params.flat_grads.defined(), "data parallelism needs the flat gradient buffer");
  Tensor& flat = params.flat_grads;
  const std::int64_t n = flat.numel();
  std::vector<Tensor> buckets;
  std::vector<std::unique_ptr<CommRequest>> requests;
  for (std::int64_t begin = 0; begin < n; begin += bucket_elements) {
    buckets.push_back(flat.slice(begin, std::min(n, begin + bucket_elements)));
    requests.push_back(dp.start_all_reduce(buckets.back(), ReduceOp::sum));
  }
  for (auto& r : requests) r->wait();
}

}  // namespace metamorph

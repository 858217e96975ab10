#pragma once
// A BatchSource over a Megatron indexed dataset: this data-parallel rank's slice of every global
// batch, in the loader's layout-independent order.
#include "runtime/data/sample_loader.hpp"
#include "runtime/train/batch_source.hpp"

namespace metamorph {

class DatasetRows final : public BatchSource {
 public:
  DatasetRows(const data::IndexedDataset& dataset, const data::LoaderOptions& options,
              int dp_rank = 0, int dp_size = 1)
      : loader_(dataset, options), dp_rank_(dp_rank), dp_size_(dp_size) {}

  void next(std::int64_t global_rows, std::int32_t* out) override {
    loader_.next_batch(global_rows, dp_rank_, dp_size_, out);
  }
  std::int64_t seq() const override { return loader_.options().seq; }
  nlohmann::json position() const override { return loader_.position(); }
  void restore(const nlohmann::json& position) override { loader_.restore(position); }

 private:
  data::SampleLoader loader_;
  int dp_rank_, dp_size_;
};

}  // namespace metamorph

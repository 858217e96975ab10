#pragma once
// Uniformly random token rows from a Philox stream: data for benchmarks and smoke tests that
// must not depend on a corpus. Row g of the run is the same whatever the batch split.
#include "runtime/rng/philox.hpp"
#include "runtime/train/batch_source.hpp"

namespace metamorph {

class RandomRows final : public BatchSource {
 public:
  RandomRows(std::int64_t seq, std::int64_t vocab, std::uint64_t seed)
      : seq_(seq), vocab_(vocab), stream_(seed, "random.rows") {}

  void next(std::int64_t global_rows, std::int32_t* out) override {
    const std::int64_t width = seq_ + 1;
    for (std::int64_t i = 0; i < global_rows * width; ++i) {
      const auto index = static_cast<std::uint64_t>(next_row_ * width + i);
      out[i] =
          static_cast<std::int32_t>(stream_.bits(index)[0] % static_cast<std::uint32_t>(vocab_));
    }
    next_row_ += global_rows;
  }
  std::int64_t seq() const override { return seq_; }
  nlohmann::json position() const override { return {{"next_row", next_row_}}; }
  void restore(const nlohmann::json& position) override {
    next_row_ = position.at("next_row").get<std::int64_t>();
  }

 private:
  std::int64_t seq_, vocab_;
  rng::Stream stream_;
  std::int64_t next_row_ = 0;
};

}  // namespace metamorph

#pragma once
// Where the trainer's token rows come from: each row is seq+1 tokens (inputs and shifted
// targets). Implementations keep a resumable position.
#include <cstdint>
#include <nlohmann/json.hpp>

namespace metamorph {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // Fills out[rows * (seq + 1)] with this rank's rows of the next global batch of
  // `global_rows` rows, and advances past the whole global batch.
  virtual void next(std::int64_t global_rows, std::int32_t* out) = 0;
  virtual std::int64_t seq() const = 0;
  virtual nlohmann::json position() const = 0;
  virtual void restore(const nlohmann::json& position) = 0;
};

}  // namespace metamorph

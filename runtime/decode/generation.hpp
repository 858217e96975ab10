#pragma once
// What a generation returns, for AR and block-diffusion decoding alike.
#include <cstdint>
#include <ctime>
#include <functional>
#include <vector>

#include "models/transformer.hpp"

namespace metamorph::decode {

struct Generation {
  std::vector<std::int32_t> tokens;  // the new tokens only
  std::int64_t forward_passes = 0;   // model calls, the prompt's prefill included
  double seconds = 0.0;
  // Processor time of the whole process over the same span: on a shared machine wall-clock
  // speed depends on the neighbours, this much less (with one compute thread it is the work).
  double cpu_seconds = 0.0;

  double tokens_per_s() const {
    return seconds > 0.0 ? static_cast<double>(tokens.size()) / seconds : 0.0;
  }
  double tokens_per_cpu_s() const {
    return cpu_seconds > 0.0 ? static_cast<double>(tokens.size()) / cpu_seconds : 0.0;
  }
  double tokens_per_forward() const {
    return forward_passes > 0
               ? static_cast<double>(tokens.size()) / static_cast<double>(forward_passes)
               : 0.0;
  }
};

// Sees, at every decoding step, the logits [rows, vocab] that predict the tokens being decoded
// (AR: one row; diffusion: one row per position of the current block) and the position of the
// first of them.
using StepObserver = std::function<void(std::int64_t first_position, const Tensor& logits)>;

// Processor seconds used by this process so far (std::clock).
inline double process_cpu_seconds() {
  return static_cast<double>(std::clock()) / static_cast<double>(CLOCKS_PER_SEC);
}

// Throws InputError for an empty prompt, no tokens to generate, or a prompt plus generation
// longer than the model's context.
void check_prompt(const ModelConfig& config, std::int64_t prompt_tokens,
                  std::int64_t max_new_tokens);

}  // namespace metamorph::decode

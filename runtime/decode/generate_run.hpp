#pragma once
// A whole `metamorph generate`: the checkpoint's model, the dataset's tokenizer, a prompt in,
// text and decoding speed out.
#include <cstdint>
#include <string>

#include "runtime/core/tensor.hpp"
#include "runtime/decode/generation.hpp"
#include "runtime/decode/sampling.hpp"

namespace metamorph::decode {

struct GenerateRunOptions {
  std::string ckpt;         // checkpoint root or step directory
  std::string data_prefix;  // tokenizer's dataset; empty: the one the checkpoint was trained on
  std::string prompt;       // text
  std::int64_t max_tokens = 64;
  std::string mode;             // "ar" | "diffusion"; empty: diffusion for a diffusion checkpoint
  std::int64_t block_size = 0;  // 0: the checkpoint's
  double threshold = 0.9;
  std::int64_t steps_per_block = 0;
  SamplingOptions sampling;
  Device device = Device::cpu;  // cuda: one GPU (bf16 weights and activations)
};

struct GenerateRunResult {
  std::string mode;
  std::string text;
  Generation generation;
};

// InputError for a missing checkpoint or tokenizer, an empty or too long prompt, or diffusion
// decoding of a checkpoint without [MASK].
GenerateRunResult run_generate(const GenerateRunOptions& options);

}  // namespace metamorph::decode

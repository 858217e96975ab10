#pragma once
// `metamorph logits`: the full-vocabulary logits a checkpoint gives for token rows read from a
// file, on the CPU or one GPU, written as fp32 .npy [batch, seq, vocab]. What tests compare with
// other implementations of the same model (Hugging Face transformers, tests/gpu/hf_parity.py).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "runtime/core/arena.hpp"

namespace metamorph {

// Token rows from a file: .npy of integers, shape [seq] (one row) or [batch, seq]; any other
// extension is raw little-endian int32, `seq` tokens per row (0: the whole file is one row).
struct TokenRows {
  std::int64_t batch = 0, seq = 0;
  std::vector<std::int32_t> ids;  // batch * seq, row-major
};
TokenRows read_token_rows(const std::filesystem::path& path, std::int64_t seq = 0);

struct LogitsOptions {
  std::string checkpoint;  // checkpoint directory (its latest step) or one step's directory
  std::string tokens;      // token file (read_token_rows)
  std::int64_t seq = 0;    // raw token files: tokens per row
  std::string out;         // .npy to write, f32 [batch, seq, vocab]
  Device device = Device::cpu;
  std::int64_t micro_batch = 8;  // rows per forward pass
};

struct LogitsResult {
  std::int64_t batch = 0, seq = 0, vocab = 0;
  std::int64_t step = 0;       // the checkpoint's step
  double forward_seconds = 0;  // the forward passes and the copies of their logits
};

// InputError (exit 2) for a bad token file, an id outside [0, vocab), a sequence longer than
// max_position_embeddings or a device this build or machine cannot use.
LogitsResult write_logits(const LogitsOptions& options);

}  // namespace metamorph

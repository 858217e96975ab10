#pragma once
// `metamorph data prepare` without the command line: text files in, a tokenizer and a Megatron
// indexed dataset out. Writes PREFIX.bin, PREFIX.idx, PREFIX.tokenizer.json (+ PREFIX.model for
// SentencePiece) and PREFIX.data.json, all or nothing.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace metamorph::data {

struct PrepareOptions {
  std::string input;      // a file or a directory (see text_corpus.hpp for the rules)
  std::string tokenizer;  // "byte" or "sentencepiece"
  std::optional<std::int32_t> vocab_size;  // byte: 258 unless given; sentencepiece: 4096
  std::string output_prefix;
  double validation_fraction = 0.01;
  int threads = 2;
};

struct PrepareProgress {
  std::string stage;  // "reading", "training tokenizer", "tokenizing"
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total = 0;
  std::int64_t documents = 0;
  std::int64_t tokens = 0;
};

// Called often; throttling is the caller's business.
using PrepareProgressCallback = std::function<void(const PrepareProgress&)>;

struct PrepareSummary {
  std::int64_t files = 0;
  std::int64_t documents = 0;
  std::int64_t tokens = 0;  // including one end-of-document token per document
  std::int64_t validation_documents = 0;
  std::int32_t vocab_size = 0;
  std::string tokenizer;
  std::vector<std::string> outputs;
};

// InputError for bad options or input; nothing is left under PREFIX unless it succeeds.
PrepareSummary prepare_dataset(const PrepareOptions& options,
                               const PrepareProgressCallback& progress = nullptr);

}  // namespace metamorph::data

#pragma once
// Writes a Megatron indexed dataset (format in indexed_dataset.hpp). Tokens stream to the .bin as
// documents arrive; the .idx is written by finish(). Both go through StagedFiles, so they appear
// under their final names only when the caller commits, and the .idx (staged last) marks a
// complete dataset.
#include <cstdint>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "runtime/data/dtype.hpp"
#include "runtime/data/staged_files.hpp"

namespace metamorph::data {

class IndexedDatasetWriter {
 public:
  // Stages PREFIX.bin now (so an unwritable location fails before any work) and PREFIX.idx at
  // finish(). Token ids must lie in [0, vocab_size), which also picks the element type.
  IndexedDatasetWriter(const std::string& prefix, std::int64_t vocab_size, StagedFiles& staging);

  // One sequence; documents group consecutive sequences.
  void add_sequence(std::span<const std::int32_t> tokens);
  // Closes the current document (Megatron's end_document).
  void end_document();
  // add_sequence + end_document: the usual case, one sequence per document.
  void add_document(std::span<const std::int32_t> tokens);

  // Writes the index; call commit() on the staging afterwards.
  void finish();

  DType dtype() const { return dtype_; }
  std::int64_t num_documents() const { return static_cast<std::int64_t>(documents_.size()) - 1; }
  std::int64_t num_tokens() const { return num_tokens_; }

 private:
  std::string prefix_;
  std::int64_t vocab_size_;
  StagedFiles& staging_;
  DType dtype_;
  std::ofstream bin_;
  std::string bin_temp_;
  std::vector<std::int32_t> lengths_;
  std::vector<std::int64_t> documents_{0};
  std::int64_t num_tokens_ = 0;
  bool finished_ = false;
};

// Writes a whole dataset, one sequence per document, and commits it.
void write_indexed_dataset(const std::string& prefix, std::int64_t vocab_size,
                           const std::vector<std::vector<std::int32_t>>& documents);

}  // namespace metamorph::data

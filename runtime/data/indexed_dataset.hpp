#pragma once
// Reader of Megatron-LM's memory-mapped indexed dataset (MMIDIDX), the format Megatron's
// preprocess_data.py writes, so corpora move between the two systems unchanged.
//
// PREFIX.idx, little-endian:
//   9 bytes   magic "MMIDIDX\0\0"
//   uint64    version (1)
//   uint8     dtype code of the .bin elements (see dtype.hpp)
//   uint64    S, the number of sequences
//   uint64    D1, the length of the document index array (documents + 1)
//   int32[S]  tokens per sequence
//   int64[S]  byte offset of each sequence in .bin
//   int64[D1] sequence index where each document starts; first 0, last S
// PREFIX.bin: every sequence's token ids back to back.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/data/dtype.hpp"
#include "runtime/data/mapped_file.hpp"

namespace metamorph::data {

inline constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr std::uint64_t kIndexVersion = 1;
inline constexpr std::size_t kIndexHeaderBytes = 9 + 8 + 1 + 8 + 8;

class IndexedDataset {
 public:
  // Opens PREFIX.idx and PREFIX.bin and checks that they agree with each other and with the
  // format; a truncated, foreign or inconsistent file is an InputError naming it and the fault.
  explicit IndexedDataset(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  DType dtype() const { return dtype_; }
  std::int64_t num_sequences() const { return num_sequences_; }
  std::int64_t num_documents() const { return num_document_entries_ - 1; }
  std::int64_t num_tokens() const { return num_tokens_; }

  std::int32_t sequence_length(std::int64_t sequence) const;
  std::int64_t sequence_byte_offset(std::int64_t sequence) const;
  // Index of the first sequence of `document`; document_start(num_documents()) is S.
  std::int64_t document_start(std::int64_t document) const;
  // Tokens of a document (all its sequences back to back).
  std::int64_t document_length(std::int64_t document) const;

  // Sequences lie back to back in .bin (checked on open), so every token has a global index:
  // its byte offset over the element size. A document's tokens are one contiguous range.
  std::int64_t document_first_token(std::int64_t document) const;

  // Copies tokens [first, first + count) of the whole token stream into out, as int32.
  void read_tokens(std::int64_t first, std::int64_t count, std::int32_t* out) const;
  std::vector<std::int32_t> sequence(std::int64_t sequence) const;
  std::vector<std::int32_t> document(std::int64_t document) const;

 private:
  // Checks the arrays against each other and the .bin size; returns the token count.
  std::int64_t validate() const;
  std::string prefix_;
  MappedFile index_;
  MappedFile bin_;
  DType dtype_ = DType::kUInt16;
  std::int64_t num_sequences_ = 0;
  std::int64_t num_document_entries_ = 0;
  std::int64_t num_tokens_ = 0;
  std::size_t lengths_at_ = 0, offsets_at_ = 0, documents_at_ = 0;
};

}  // namespace metamorph::data

#pragma once
// SentencePiece (unigram) trained on the corpus itself. Choices that make decode(encode(text))
// return the text unchanged: no normalisation, whitespace kept as is, "\n" a piece of its own,
// and byte fallback for characters the vocabulary lacks. Ids: 0 unk, 1 bos, 2 eos, 3 pad.
#include <sentencepiece_processor.h>
#include <functional>
#include <memory>

#include "runtime/data/tokenizer.hpp"

namespace metamorph::data {

// Yields the next document into its argument; false when there are no more.
using DocumentSource = std::function<bool(std::string& document)>;

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Four special pieces, 256 byte pieces, "\n", and at least one learned piece.
  static constexpr std::int32_t kMinVocab = 262;

  // Trains on every document `source` yields. InputError when vocab_size is below kMinVocab or
  // beyond what the corpus supports (the message says which sizes would work).
  static std::unique_ptr<SentencePieceTokenizer> train(const DocumentSource& source,
                                                       std::int32_t vocab_size, int threads = 2);
  // Loads a .model file written by save() (or by spm_train).
  static std::unique_ptr<SentencePieceTokenizer> load(const std::string& model_path);

  std::string kind() const override { return "sentencepiece"; }
  std::int32_t vocab_size() const override;
  SpecialTokens special_tokens() const override;
  std::vector<std::int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const std::int32_t> ids) const override;
  // Stages PREFIX.model and PREFIX.tokenizer.json.
  void save(const std::string& prefix, StagedFiles& staging) const override;

 private:
  SentencePieceTokenizer(std::string serialized_model, const std::string& origin);
  std::string serialized_model_;
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace metamorph::data

#pragma once
// Text <-> token ids. A dataset's tokenizer is saved next to it (PREFIX.tokenizer.json, plus
// PREFIX.model for SentencePiece) so that training, evaluation and generation decode with the
// exact vocabulary the data was encoded with.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/data/staged_files.hpp"

namespace metamorph::data {

struct SpecialTokens {
  std::optional<std::int32_t> bos;
  std::optional<std::int32_t> eos;  // appended to every document by `data prepare`
  std::optional<std::int32_t> pad;  // fills the tail of a sample in the loader's pad mode
  std::optional<std::int32_t> unk;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "byte" or "sentencepiece", as PREFIX.tokenizer.json names it.
  virtual std::string kind() const = 0;
  virtual std::int32_t vocab_size() const = 0;
  virtual SpecialTokens special_tokens() const = 0;

  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  // Special tokens decode to nothing; an id outside [0, vocab_size()) is an InputError.
  virtual std::string decode(std::span<const std::int32_t> ids) const = 0;

  // Stages PREFIX.tokenizer.json (and any model file it refers to) for the caller to commit.
  virtual void save(const std::string& prefix, StagedFiles& staging) const = 0;
};

// Saves and commits at once.
void save_tokenizer(const Tokenizer& tokenizer, const std::string& prefix);

// Reads PREFIX.tokenizer.json (and the model it names). InputError when missing or malformed.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& prefix);

// PREFIX.tokenizer.json
std::string tokenizer_path(const std::string& prefix);

}  // namespace metamorph::data

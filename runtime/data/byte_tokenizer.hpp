#pragma once
// Ids 0..255 are the raw bytes of UTF-8 text; 256 ends a document, 257 pads. A vocabulary larger
// than 258 leaves the extra ids unused (room for an embedding size the hardware likes, or for
// tokens added later, such as a diffusion [MASK]).
#include "runtime/data/tokenizer.hpp"

namespace metamorph::data {

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::int32_t kEos = 256;
  static constexpr std::int32_t kPad = 257;
  static constexpr std::int32_t kMinVocab = 258;

  // InputError when vocab_size < kMinVocab.
  explicit ByteTokenizer(std::int32_t vocab_size = kMinVocab);

  std::string kind() const override { return "byte"; }
  std::int32_t vocab_size() const override { return vocab_size_; }
  SpecialTokens special_tokens() const override;
  std::vector<std::int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const std::int32_t> ids) const override;
  void save(const std::string& prefix, StagedFiles& staging) const override;

 private:
  std::int32_t vocab_size_;
};

}  // namespace metamorph::data

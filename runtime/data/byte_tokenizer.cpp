#include "runtime/data/byte_tokenizer.hpp"

#include "runtime/core/error.hpp"
#include "runtime/data/tokenizer_json.hpp"

namespace metamorph::data {

ByteTokenizer::ByteTokenizer(std::int32_t vocab_size) : vocab_size_(vocab_size) {
  require(vocab_size >= kMinVocab, "--vocab ", vocab_size,
          " is too small for the byte tokenizer: it needs at least ", kMinVocab,
          " (256 bytes, end-of-document, padding)");
}

SpecialTokens ByteTokenizer::special_tokens() const {
  SpecialTokens special;
  special.eos = kEos;
  special.pad = kPad;
  return special;
}

std::vector<std::int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> ids;
  ids.reserve(text.size());
  for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

std::string ByteTokenizer::decode(std::span<const std::int32_t> ids) const {
  std::string text;
  text.reserve(ids.size());
  for (const std::int32_t id : ids) {
    require(id >= 0 && id < vocab_size_, "token id ", id, " is outside the byte vocabulary [0, ",
            vocab_size_, ")");
    if (id < 256) text.push_back(static_cast<char>(id));
  }
  return text;
}

void ByteTokenizer::save(const std::string& prefix, StagedFiles& staging) const {
  stage_tokenizer_json(describe_tokenizer(*this), prefix, staging);
}

}  // namespace metamorph::data

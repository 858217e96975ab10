#pragma once
// The description file shared by every tokenizer kind:
//   {"format": "metamorph-tokenizer", "version": 1, "kind": ..., "vocab_size": ...,
//    "special_tokens": {"eos": ..., "pad": ...}, ...kind-specific fields}
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/data/tokenizer.hpp"

namespace metamorph::data {

inline constexpr const char* kTokenizerFormat = "metamorph-tokenizer";
inline constexpr int kTokenizerFormatVersion = 1;

nlohmann::json describe_tokenizer(const Tokenizer& tokenizer);

// Writes `description` to PREFIX.tokenizer.json through the staging.
void stage_tokenizer_json(const nlohmann::json& description, const std::string& prefix,
                          StagedFiles& staging);

}  // namespace metamorph::data

#pragma once
// PREFIX.data.json: what `data prepare` made, for the people and programs that read the dataset
// later: {"format": "metamorph-data", "version": 1, "documents", "tokens", "vocab_size",
// "tokenizer", "validation_fraction", "validation_documents", "inputs"}.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/data/staged_files.hpp"

namespace metamorph::data {

std::string manifest_path(const std::string& prefix);

void stage_manifest(const nlohmann::json& manifest, const std::string& prefix,
                    StagedFiles& staging);

// The validation fraction PREFIX.data.json records, or 0 when the dataset has no manifest (e.g.
// Megatron's own tools made it). InputError when the manifest exists but is malformed.
double recorded_validation_fraction(const std::string& prefix);

}  // namespace metamorph::data

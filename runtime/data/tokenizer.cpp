#include "runtime/data/tokenizer.hpp"

#include <filesystem>
#include <fstream>

#include "runtime/core/error.hpp"
#include "runtime/data/byte_tokenizer.hpp"
#include "runtime/data/sentencepiece_tokenizer.hpp"
#include "runtime/data/tokenizer_json.hpp"

namespace metamorph::data {

namespace {

void put_special(nlohmann::json& out, const char* name, const std::optional<std::int32_t>& id) {
  if (id) out[name] = *id;
}

}  // namespace

std::string tokenizer_path(const std::string& prefix) {
  return prefix + ".tokenizer.json";
}

nlohmann::json describe_tokenizer(const Tokenizer& tokenizer) {
  const SpecialTokens special = tokenizer.special_tokens();
  nlohmann::json specials = nlohmann::json::object();
  put_special(specials, "bos", special.bos);
  put_special(specials, "eos", special.eos);
  put_special(specials, "pad", special.pad);
  put_special(specials, "unk", special.unk);
  return {{"format", kTokenizerFormat},
          {"version", kTokenizerFormatVersion},
          {"kind", tokenizer.kind()},
          {"vocab_size", tokenizer.vocab_size()},
          {"special_tokens", specials}};
}

void stage_tokenizer_json(const nlohmann::json& description, const std::string& prefix,
                          StagedFiles& staging) {
  const auto temp = staging.stage(tokenizer_path(prefix));
  std::ofstream out(temp, std::ios::trunc);
  out << description.dump(2) << "\n";
  out.close();
  require(!out.fail(), "cannot write ", temp.string(), " (disk full?)");
}

void save_tokenizer(const Tokenizer& tokenizer, const std::string& prefix) {
  StagedFiles staging;
  tokenizer.save(prefix, staging);
  staging.commit();
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& prefix) {
  const std::string path = tokenizer_path(prefix);
  std::ifstream in(path);
  require(in.good(), "cannot open ", path,
          "; a dataset prepared by 'metamorph data prepare' has its tokenizer there");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat(path, ": not valid JSON (", e.what(), ")"));
  }
  require(doc.is_object() && doc.value("format", "") == kTokenizerFormat, path,
          ": not a metamorph tokenizer description (\"format\" must be \"", kTokenizerFormat,
          "\")");
  require(doc.value("version", 0) == kTokenizerFormatVersion, path, ": unsupported version ",
          doc.value("version", 0), " (this build reads version ", kTokenizerFormatVersion, ")");
  const std::string kind = doc.value("kind", "");
  require(doc.contains("vocab_size") && doc["vocab_size"].is_number_integer(), path,
          ": \"vocab_size\" must be an integer");
  const auto vocab_size = doc["vocab_size"].get<std::int64_t>();
  std::unique_ptr<Tokenizer> tokenizer;
  if (kind == "byte") {
    require(vocab_size >= ByteTokenizer::kMinVocab && vocab_size <= (1 << 30), path,
            ": vocab_size ", vocab_size, " is out of range for the byte tokenizer");
    tokenizer = std::make_unique<ByteTokenizer>(static_cast<std::int32_t>(vocab_size));
  } else if (kind == "sentencepiece") {
    require(doc.contains("model_file") && doc["model_file"].is_string(), path,
            ": \"model_file\" must name the SentencePiece model");
    const auto model =
        std::filesystem::path(path).parent_path() / doc["model_file"].get<std::string>();
    tokenizer = SentencePieceTokenizer::load(model.string());
  } else {
    throw InputError(
        concat(path, ": unknown tokenizer kind '", kind, "'; valid kinds: byte, sentencepiece"));
  }
  require(tokenizer->vocab_size() == vocab_size, path, ": vocab_size ", vocab_size,
          " does not match the model's ", tokenizer->vocab_size());
  return tokenizer;
}

}  // namespace metamorph::data

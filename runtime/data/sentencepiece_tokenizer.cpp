#include "runtime/data/sentencepiece_tokenizer.hpp"

#include <sentencepiece_trainer.h>

#include <exception>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <unordered_map>

#include "runtime/core/error.hpp"
#include "runtime/data/tokenizer_json.hpp"

namespace metamorph::data {

namespace {

// SentencePiece drops training "sentences" longer than this; longer documents are cut at line
// breaks (or hard, at a UTF-8 boundary) into pieces that fit.
constexpr std::size_t kMaxSentenceBytes = 1 << 16;

std::size_t utf8_boundary_at_or_before(const std::string& text, std::size_t at) {
  while (at > 0 && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) --at;
  return at;
}

class DocumentSentences : public sentencepiece::SentenceIterator {
 public:
  explicit DocumentSentences(const DocumentSource& source) : source_(source) { Next(); }
  bool done() const override { return done_; }
  const std::string& value() const override { return current_; }
  sentencepiece::util::Status status() const override {
    if (!failure_) return {};
    return {sentencepiece::util::StatusCode::kAborted, "reading the corpus failed"};
  }

  // Our errors must not unwind through SentencePiece's code: they stop the iteration, and
  // train() rethrows them once SentencePiece has returned.
  void Next() override {
    try {
      advance();
    } catch (...) {
      failure_ = std::current_exception();
      done_ = true;
    }
  }

  void rethrow_failure() const {
    if (failure_) std::rethrow_exception(failure_);
  }

 private:
  void advance() {
    if (pending_.empty()) {
      std::string document;
      // Empty documents would only be noise for the trainer.
      do {
        if (!source_(document)) {
          done_ = true;
          return;
        }
      } while (document.empty());
      pending_ = std::move(document);
    }
    if (pending_.size() <= kMaxSentenceBytes) {
      current_ = std::move(pending_);
      pending_.clear();
      return;
    }
    std::size_t cut = pending_.rfind('\n', kMaxSentenceBytes - 1);
    cut = cut == std::string::npos || cut == 0
              ? utf8_boundary_at_or_before(pending_, kMaxSentenceBytes)
              : cut + 1;
    current_ = pending_.substr(0, cut);
    pending_.erase(0, cut);
  }

  const DocumentSource& source_;
  std::string pending_;
  std::string current_;
  bool done_ = false;
  std::exception_ptr failure_;
};

// SentencePiece states its limits only inside its error text; turn them into advice.
[[noreturn]] void explain_training_failure(const std::string& message, std::int32_t vocab_size) {
  std::smatch match;
  if (std::regex_search(message, match, std::regex("value <= ([0-9]+)"))) {
    throw InputError(concat("--vocab ", vocab_size,
                            " is larger than this corpus supports: SentencePiece can build at "
                            "most ",
                            match[1].str(), " pieces from it; use --vocab ", match[1].str(),
                            " or less, or more text"));
  }
  if (std::regex_search(message, match, std::regex("required_chars\\. [0-9]+ vs ([0-9]+)"))) {
    throw InputError(concat("--vocab ", vocab_size,
                            " is too small for this corpus: its characters and the special pieces "
                            "alone need ",
                            match[1].str(), "; use --vocab ", match[1].str(), " or more"));
  }
  throw InputError(concat("SentencePiece training failed: ", message));
}

}  // namespace

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::train(const DocumentSource& source,
                                                                      std::int32_t vocab_size,
                                                                      int threads) {
  require(vocab_size >= kMinVocab, "--vocab ", vocab_size,
          " is too small for the sentencepiece tokenizer: it needs at least ", kMinVocab,
          " (4 special pieces, 256 byte-fallback pieces, newline, one learned piece)");
  const std::unordered_map<std::string, std::string> options = {
      {"vocab_size", std::to_string(vocab_size)},
      {"model_type", "unigram"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"user_defined_symbols", "\n"},
      {"byte_fallback", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "3"},
      {"num_threads", std::to_string(threads)},
      {"max_sentence_length", std::to_string(kMaxSentenceBytes)},
      // Beyond a few million sentences more text barely changes the pieces; sample instead.
      {"input_sentence_size", "2000000"},
      {"shuffle_input_sentence", "true"},
      {"minloglevel", "2"},
  };
  DocumentSentences sentences(source);
  sentences.rethrow_failure();
  require(!sentences.done(), "no text to train the sentencepiece tokenizer on");
  std::string serialized;
  const auto status = sentencepiece::SentencePieceTrainer::Train(options, &sentences, &serialized);
  sentences.rethrow_failure();
  if (!status.ok()) explain_training_failure(status.ToString(), vocab_size);
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(serialized), "the trained model"));
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::load(
    const std::string& model_path) {
  std::ifstream in(model_path, std::ios::binary);
  require(in.good(), "cannot open the SentencePiece model ", model_path);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(bytes.str(), model_path));
}

SentencePieceTokenizer::SentencePieceTokenizer(std::string serialized_model,
                                               const std::string& origin)
    : serialized_model_(std::move(serialized_model)) {
  const auto status = processor_.LoadFromSerializedProto(serialized_model_);
  require(status.ok(), origin, " is not a valid SentencePiece model: ", status.ToString());
}

std::int32_t SentencePieceTokenizer::vocab_size() const {
  return processor_.GetPieceSize();
}

SpecialTokens SentencePieceTokenizer::special_tokens() const {
  const auto present = [](int id) {
    return id >= 0 ? std::optional<std::int32_t>(id) : std::nullopt;
  };
  SpecialTokens special;
  special.unk = present(processor_.unk_id());
  special.bos = present(processor_.bos_id());
  special.eos = present(processor_.eos_id());
  special.pad = present(processor_.pad_id());
  return special;
}

std::vector<std::int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = processor_.Encode(text, &ids);
  require(status.ok(), "SentencePiece cannot encode the text: ", status.ToString());
  return {ids.begin(), ids.end()};
}

std::string SentencePieceTokenizer::decode(std::span<const std::int32_t> ids) const {
  const std::int32_t vocab = vocab_size();
  std::vector<int> pieces;
  pieces.reserve(ids.size());
  for (const std::int32_t id : ids) {
    require(id >= 0 && id < vocab, "token id ", id, " is outside the SentencePiece vocabulary [0, ",
            vocab, ")");
    pieces.push_back(id);
  }
  std::string text;
  const auto status = processor_.Decode(pieces, &text);
  require(status.ok(), "SentencePiece cannot decode the ids: ", status.ToString());
  return text;
}

void SentencePieceTokenizer::save(const std::string& prefix, StagedFiles& staging) const {
  const std::filesystem::path model_path = prefix + ".model";
  const auto temp = staging.stage(model_path);
  std::ofstream out(temp, std::ios::binary | std::ios::trunc);
  out.write(serialized_model_.data(), static_cast<std::streamsize>(serialized_model_.size()));
  out.close();
  require(!out.fail(), "cannot write ", temp.string(), " (disk full?)");
  auto description = describe_tokenizer(*this);
  // Relative, so the dataset can be moved as a set of files.
  description["model_file"] = model_path.filename().string();
  stage_tokenizer_json(description, prefix, staging);
}

}  // namespace metamorph::data

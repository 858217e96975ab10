#include "runtime/data/prepare.hpp"

#include <filesystem>
#include <memory>

#include "runtime/core/error.hpp"
#include "runtime/data/byte_tokenizer.hpp"
#include "runtime/data/data_manifest.hpp"
#include "runtime/data/document_split.hpp"
#include "runtime/data/indexed_dataset_writer.hpp"
#include "runtime/data/sentencepiece_tokenizer.hpp"
#include "runtime/data/text_corpus.hpp"
#include "runtime/data/tokenizer.hpp"

namespace metamorph::data {

namespace fs = std::filesystem;

namespace {

constexpr std::int32_t kDefaultSentencePieceVocab = 4096;

std::int32_t chosen_vocab(const PrepareOptions& options) {
  if (options.tokenizer == "byte") {
    const std::int32_t vocab = options.vocab_size.value_or(ByteTokenizer::kMinVocab);
    require(vocab >= ByteTokenizer::kMinVocab, "--vocab ", vocab,
            " is too small for the byte tokenizer: it needs at least ", ByteTokenizer::kMinVocab,
            " (256 bytes, end-of-document, padding)");
    return vocab;
  }
  if (options.tokenizer == "sentencepiece") {
    const std::int32_t vocab = options.vocab_size.value_or(kDefaultSentencePieceVocab);
    require(vocab >= SentencePieceTokenizer::kMinVocab, "--vocab ", vocab,
            " is too small for the sentencepiece tokenizer: it needs at least ",
            SentencePieceTokenizer::kMinVocab,
            " (4 special pieces, 256 byte-fallback pieces, newline, one learned piece)");
    return vocab;
  }
  throw InputError(concat("--tokenizer '", options.tokenizer,
                          "' is not a tokenizer kind; valid kinds: byte, sentencepiece"));
}

struct CorpusCensus {
  std::uint64_t bytes = 0;
  std::int64_t documents = 0;
};

// A full read before any expensive step, so bad files are reported in seconds.
CorpusCensus survey(const std::vector<fs::path>& files, const PrepareProgressCallback& progress) {
  CorpusCensus census;
  for (const auto& file : files) {
    const std::string text = read_text_file(file);
    census.bytes += text.size();
    census.documents += static_cast<std::int64_t>(split_documents(text).size());
    if (progress) progress({"reading", census.bytes, 0, census.documents, 0});
  }
  return census;
}

}  // namespace

PrepareSummary prepare_dataset(const PrepareOptions& options,
                               const PrepareProgressCallback& progress) {
  const std::int32_t vocab = chosen_vocab(options);
  require(!options.output_prefix.empty(), "--output must name a file prefix, e.g. data/corpus");
  require(options.validation_fraction >= 0.0 && options.validation_fraction < 1.0,
          "--validation-fraction ", options.validation_fraction, " must lie in [0, 1)");
  const auto files = collect_input_files(options.input);

  // Staging the .bin first also proves the output location writable before the long steps.
  StagedFiles staging;
  IndexedDatasetWriter writer(options.output_prefix, vocab, staging);

  const CorpusCensus census = survey(files, progress);
  require(census.documents > 0, "--input ", options.input, " holds no text (", files.size(),
          files.size() == 1 ? " file" : " files", ", all empty or blank)");
  const std::int64_t validation_documents =
      validation_document_count(census.documents, options.validation_fraction);

  std::unique_ptr<Tokenizer> tokenizer;
  if (options.tokenizer == "byte") {
    tokenizer = std::make_unique<ByteTokenizer>(vocab);
  } else {
    if (progress) progress({"training tokenizer", 0, census.bytes, census.documents, 0});
    tokenizer = SentencePieceTokenizer::train(document_source(files), vocab, options.threads);
  }
  MM_ASSERT(tokenizer->vocab_size() == vocab);
  const auto eos = tokenizer->special_tokens().eos;
  MM_ASSERT(eos.has_value());

  PrepareProgress state{"tokenizing", 0, census.bytes, 0, 0};
  const DocumentSource documents = document_source(files);
  std::string document;
  std::vector<std::int32_t> ids;
  while (documents(document)) {
    ids = tokenizer->encode(document);
    // Megatron's --append-eod: the model learns where one document ends and the next begins.
    ids.push_back(*eos);
    writer.add_document(ids);
    state.bytes_done += document.size();
    state.documents += 1;
    state.tokens += static_cast<std::int64_t>(ids.size());
    if (progress) progress(state);
  }

  tokenizer->save(options.output_prefix, staging);
  stage_manifest({{"format", "metamorph-data"},
                  {"version", 1},
                  {"documents", state.documents},
                  {"tokens", state.tokens},
                  {"vocab_size", vocab},
                  {"tokenizer", tokenizer->kind()},
                  {"validation_fraction", options.validation_fraction},
                  {"validation_documents", validation_documents},
                  {"input", options.input},
                  {"files", files.size()}},
                 options.output_prefix, staging);
  // The index is staged last, so it is renamed last: a dataset with an .idx is complete.
  writer.finish();
  staging.commit();

  PrepareSummary summary;
  summary.files = static_cast<std::int64_t>(files.size());
  summary.documents = state.documents;
  summary.tokens = state.tokens;
  summary.validation_documents = validation_documents;
  summary.vocab_size = vocab;
  summary.tokenizer = tokenizer->kind();
  const std::string& p = options.output_prefix;
  summary.outputs = {p + ".bin", p + ".idx", tokenizer_path(p), manifest_path(p)};
  if (tokenizer->kind() == "sentencepiece") summary.outputs.push_back(p + ".model");
  return summary;
}

}  // namespace metamorph::data

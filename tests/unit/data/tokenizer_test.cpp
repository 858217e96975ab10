// Byte and SentencePiece tokenizers: round trips, special ids, save/load through the dataset
// prefix, vocabulary limits, and our SentencePiece ids against the spm_encode tool.
#include <gtest/gtest.h>

#include <filesystem>

#include "runtime/core/error.hpp"
#include "runtime/data/byte_tokenizer.hpp"
#include "runtime/data/sentencepiece_tokenizer.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/data/corpus_fixture.hpp"

namespace metamorph::data {
namespace {

DocumentSource from(const std::vector<std::string>& documents) {
  auto next = std::make_shared<std::size_t>(0);
  return [documents, next](std::string& document) {
    if (*next == documents.size()) return false;
    document = documents[(*next)++];
    return true;
  };
}

std::string message_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(ByteTokenizer, RoundTripsUtf8AndDropsSpecialTokens) {
  const ByteTokenizer tokenizer;
  const std::string text = "h\xC3\xA9llo\n\tw\xE2\x88\x91rld";  // héllo, tab, w∑rld
  const auto ids = tokenizer.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  EXPECT_EQ(ids[1], 0xC3);
  EXPECT_EQ(ids[2], 0xA9);
  auto with_specials = ids;
  with_specials.push_back(ByteTokenizer::kEos);
  with_specials.insert(with_specials.begin(), ByteTokenizer::kPad);
  EXPECT_EQ(tokenizer.decode(with_specials), text);
  EXPECT_EQ(tokenizer.vocab_size(), 258);
  EXPECT_EQ(tokenizer.special_tokens().eos, 256);
  EXPECT_EQ(tokenizer.special_tokens().pad, 257);
  EXPECT_FALSE(tokenizer.special_tokens().bos.has_value());
  EXPECT_THROW(tokenizer.decode(std::vector<std::int32_t>{258}), InputError);
  EXPECT_THROW(tokenizer.decode(std::vector<std::int32_t>{-1}), InputError);
  EXPECT_NE(message_of([] { ByteTokenizer small(100); }).find("at least 258"), std::string::npos);
}

TEST(ByteTokenizer, SavesAndLoadsByPrefix) {
  test::TempDir dir;
  const std::string prefix = (dir / "bytes").string();
  save_tokenizer(ByteTokenizer(320), prefix);
  const auto loaded = load_tokenizer(prefix);
  EXPECT_EQ(loaded->kind(), "byte");
  EXPECT_EQ(loaded->vocab_size(), 320);
  EXPECT_EQ(loaded->decode(loaded->encode("abc")), "abc");
}

TEST(SentencePieceTokenizer, TrainsRoundTripsAndMatchesSpmEncode) {
  const auto documents = test_corpus::documents(400);
  const auto tokenizer = SentencePieceTokenizer::train(from(documents), 300);
  EXPECT_EQ(tokenizer->vocab_size(), 300);
  const auto special = tokenizer->special_tokens();
  EXPECT_EQ(special.unk, 0);
  EXPECT_EQ(special.bos, 1);
  EXPECT_EQ(special.eos, 2);
  EXPECT_EQ(special.pad, 3);

  // Newlines, runs of spaces, a tab and characters never seen in training all survive.
  const std::string text = documents[3] + "\n\n  indented\tline \xE2\x88\x91 \xC3\xA9t\xC3\xA9 ~";
  const auto ids = tokenizer->encode(text);
  EXPECT_LT(ids.size(), text.size()) << "the model should merge frequent words";
  auto with_eos = ids;
  with_eos.push_back(*special.eos);
  EXPECT_EQ(tokenizer->decode(with_eos), text);
  EXPECT_THROW(tokenizer->decode(std::vector<std::int32_t>{300}), InputError);

  test::TempDir dir;
  const std::string prefix = (dir / "sp").string();
  save_tokenizer(*tokenizer, prefix);
  ASSERT_TRUE(std::filesystem::exists(prefix + ".model"));
  const auto loaded = load_tokenizer(prefix);
  EXPECT_EQ(loaded->kind(), "sentencepiece");
  EXPECT_EQ(loaded->encode(text), ids);

  // The reference implementation's own encoder, on one line (it reads line by line).
  const std::string line = documents[5].substr(0, documents[5].find('\n'));
  test::write_file(dir / "line.txt", line + "\n");
  const auto spm = test::run_shell("spm_encode --model=" + prefix + ".model --output_format=id < " +
                                   (dir / "line.txt").string());
  ASSERT_EQ(spm.exit_code, 0) << spm.out;
  std::string ours;
  for (const auto id : tokenizer->encode(line))
    ours += (ours.empty() ? "" : " ") + std::to_string(id);
  EXPECT_EQ(spm.out, ours + "\n");
}

TEST(SentencePieceTokenizer, VocabularyLimitsAreExplained) {
  const auto documents = test_corpus::documents(60);
  const std::string too_large =
      message_of([&] { SentencePieceTokenizer::train(from(documents), 5000); });
  EXPECT_NE(too_large.find("--vocab 5000 is larger than this corpus supports"), std::string::npos)
      << too_large;
  EXPECT_NE(too_large.find("at most"), std::string::npos) << too_large;

  const std::string below_minimum =
      message_of([&] { SentencePieceTokenizer::train(from(documents), 100); });
  EXPECT_NE(below_minimum.find("at least 262"), std::string::npos) << below_minimum;

  // Many distinct characters need more pieces than the vocabulary has room for.
  std::string cjk;
  for (int c = 0; c < 200; ++c) {
    const int code = 0x4E00 + c;
    cjk += static_cast<char>(0xE0 | (code >> 12));
    cjk += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    cjk += static_cast<char>(0x80 | (code & 0x3F));
  }
  const std::string too_small = message_of([&] {
    SentencePieceTokenizer::train(from({cjk, cjk, cjk}), 300);
  });
  EXPECT_NE(too_small.find("--vocab 300 is too small for this corpus"), std::string::npos)
      << too_small;
}

TEST(SentencePieceTokenizer, TrainsOnADocumentLongerThanSentencePieceAccepts) {
  // One ~150 KB document: SentencePiece skips sentences over 64 KiB, so it must arrive in pieces.
  std::string book;
  for (const auto& document : test_corpus::documents(1500)) book += document + "\n";
  ASSERT_GT(book.size(), 100000u);
  const auto tokenizer = SentencePieceTokenizer::train(from({book}), 300);
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(book)), book);
}

TEST(SentencePieceTokenizer, ACorpusErrorDuringTrainingReachesTheCaller) {
  const auto documents = test_corpus::documents(200);
  auto served = std::make_shared<std::size_t>(0);
  const DocumentSource failing = [&documents, served](std::string& document) {
    if (*served == 150) throw InputError("corpus.txt is not UTF-8 text: invalid UTF-8 at byte 9");
    document = documents[(*served)++];
    return true;
  };
  EXPECT_NE(message_of([&] { SentencePieceTokenizer::train(failing, 300); }).find("corpus.txt"),
            std::string::npos);
}

TEST(Tokenizer, LoadReportsMissingOrForeignDescriptions) {
  test::TempDir dir;
  const std::string prefix = (dir / "x").string();
  EXPECT_NE(message_of([&] { load_tokenizer(prefix); }).find("x.tokenizer.json"),
            std::string::npos);
  test::write_file(prefix + ".tokenizer.json", "{\"format\": \"other\"}");
  EXPECT_NE(message_of([&] { load_tokenizer(prefix); }).find("not a metamorph tokenizer"),
            std::string::npos);
  test::write_file(prefix + ".tokenizer.json",
                   R"({"format": "metamorph-tokenizer", "version": 1, "kind": "wordpiece",
                       "vocab_size": 300})");
  EXPECT_NE(message_of([&] { load_tokenizer(prefix); }).find("unknown tokenizer kind 'wordpiece'"),
            std::string::npos);
  test::write_file(prefix + ".tokenizer.json",
                   R"({"format": "metamorph-tokenizer", "version": 1, "kind": "sentencepiece",
                       "vocab_size": 300, "model_file": "x.model"})");
  test::write_file(prefix + ".model", "not a model");
  EXPECT_NE(message_of([&] { load_tokenizer(prefix); }).find("not a valid SentencePiece model"),
            std::string::npos);
}

}  // namespace
}  // namespace metamorph::data

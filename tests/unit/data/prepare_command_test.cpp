// `metamorph data prepare` end to end through the CLI: what it writes decodes back to the input
// documents, and every bad input is one line on stderr, exit code 2, and nothing left behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "runtime/data/data_manifest.hpp"
#include "runtime/data/indexed_dataset.hpp"
#include "runtime/data/sample_loader.hpp"
#include "runtime/data/tokenizer.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/data/corpus_fixture.hpp"

namespace metamorph::data {
namespace {

namespace fs = std::filesystem;
using test::run_cli;
using test::TempDir;

// Every entry of `dir` whose name starts with `stem`: outputs and leftover temporaries alike.
std::vector<std::string> files_named(const fs::path& dir, const std::string& stem) {
  std::vector<std::string> names;
  if (!fs::exists(dir)) return names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(stem, 0) == 0) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The dataset's documents decoded, each without its end-of-document token.
std::vector<std::string> decoded_documents(const std::string& prefix) {
  const IndexedDataset dataset(prefix);
  const auto tokenizer = load_tokenizer(prefix);
  std::vector<std::string> out;
  for (std::int64_t d = 0; d < dataset.num_documents(); ++d) {
    const auto ids = dataset.document(d);
    EXPECT_EQ(ids.back(), tokenizer->special_tokens().eos) << "document " << d;
    out.push_back(tokenizer->decode(ids));
  }
  return out;
}

TEST(DataPrepare, ByteTokenizerOnAGeneratedCorpusDirectory) {
  TempDir dir;
  const auto first = test_corpus::documents(30, 1), second = test_corpus::documents(20, 2);
  fs::create_directories(dir / "corpus" / "more");
  test::write_file(dir / "corpus" / "a.txt", test_corpus::fortune_file(first));
  std::string paragraphs;
  for (const auto& d : second) paragraphs += d + "\n\n";
  test::write_file(dir / "corpus" / "more" / "b.txt", paragraphs);
  const std::string prefix = (dir / "out" / "corpus").string();
  const auto r = run_cli({"data", "prepare", "--input", (dir / "corpus").string(), "--tokenizer",
                          "byte", "--output", prefix, "--validation-fraction", "0.1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prepared 50 documents (5 held out for validation)"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("from 2 files"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_EQ(files_named(dir / "out", "corpus"),
            (std::vector<std::string>{"corpus.bin", "corpus.data.json", "corpus.idx",
                                      "corpus.tokenizer.json"}));
  auto expected = first;
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(decoded_documents(prefix), expected);
  EXPECT_DOUBLE_EQ(recorded_validation_fraction(prefix), 0.1);
  EXPECT_EQ(IndexedDataset(prefix).dtype(), DType::kUInt16);
}

TEST(DataPrepare, SentencePieceOnAGeneratedCorpusFile) {
  TempDir dir;
  const auto documents = test_corpus::documents(300);
  test::write_file(dir / "corpus.txt", test_corpus::fortune_file(documents));
  const std::string prefix = (dir / "sp").string();
  const auto r = run_cli({"data", "prepare", "--input", (dir / "corpus.txt").string(),
                          "--tokenizer", "sentencepiece", "--vocab", "320", "--output", prefix});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("vocab 320 (sentencepiece)"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(prefix + ".model"));
  EXPECT_EQ(decoded_documents(prefix), documents);
  // The loader reads what prepare wrote, split as the manifest says unless told otherwise.
  const IndexedDataset dataset(prefix);
  LoaderOptions options;
  options.seq = 32;
  options.split = Split::kValidation;
  const SampleLoader validation(dataset, options);
  EXPECT_GT(validation.samples_per_epoch(), 0);
  EXPECT_EQ(validation.options().validation_fraction, 0.01);
  EXPECT_EQ(validation.position()["validation_fraction"], 0.01);
}

TEST(DataPrepare, FortunesSlice) {
  const fs::path fortunes = "/usr/share/games/fortunes";
  if (!fs::is_regular_file(fortunes / "computers"))
    GTEST_SKIP() << "the fortunes package is absent";
  TempDir dir;
  // About 200 KB of whole entries from one file.
  const std::string text = test::read_file(fortunes / "computers");
  const std::size_t cut = text.find("\n%\n", 200000);
  ASSERT_NE(cut, std::string::npos);
  test::write_file(dir / "slice", text.substr(0, cut + 3));
  for (const std::string kind : {"byte", "sentencepiece"}) {
    const std::string prefix = (dir / kind).string();
    const auto r = run_cli({"data", "prepare", "--input", (dir / "slice").string(), "--tokenizer",
                            kind, "--vocab", kind == "byte" ? "258" : "1024", "--output", prefix});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto documents = decoded_documents(prefix);
    EXPECT_GT(documents.size(), 500u);
    // Spot-check one entry against the file itself.
    EXPECT_NE(text.find("%\n" + documents[10] + "\n%\n"), std::string::npos) << documents[10];
  }
}

struct BadCase {
  std::string name;
  std::vector<std::string> args;  // after "data prepare"; --output is added
  std::string fragment;           // expected in the one-line error
};

TEST(DataPrepare, BadInputsAreOneLineExitTwoAndLeaveNothing) {
  TempDir dir;
  const auto ok = test_corpus::documents(40);
  test::write_file(dir / "ok.txt", test_corpus::fortune_file(ok));
  test::write_file(dir / "one.txt", "just one document");
  test::write_file(dir / "empty.txt", "");
  test::write_file(dir / "blank.txt", "\n  \n\t\n");
  fs::create_directories(dir / "empty_dir" / "sub");
  test::write_file(dir / "binary.bin", std::string("GIF89a\0\0\x01", 9));
  test::write_file(dir / "latin1.txt", "caf\xE9 au lait");
  fs::create_directories(dir / "mixed");
  test::write_file(dir / "mixed" / "a.txt", "good text");
  test::write_file(dir / "mixed" / "b.txt", "bad \xC3(");
  test::write_file(dir / "a_file", "x");
  const std::string ok_txt = (dir / "ok.txt").string();

  const std::vector<BadCase> cases = {
      {"missing input",
       {"--input", (dir / "absent").string(), "--tokenizer", "byte"},
       "does not exist"},
      {"empty file",
       {"--input", (dir / "empty.txt").string(), "--tokenizer", "byte"},
       "holds no text"},
      {"blank file",
       {"--input", (dir / "blank.txt").string(), "--tokenizer", "sentencepiece"},
       "holds no text"},
      {"empty directory",
       {"--input", (dir / "empty_dir").string(), "--tokenizer", "byte"},
       "holds no regular file"},
      {"binary",
       {"--input", (dir / "binary.bin").string(), "--tokenizer", "byte"},
       "binary.bin is not UTF-8 text: a NUL byte (binary data?) at byte offset 6"},
      {"not utf-8",
       {"--input", (dir / "latin1.txt").string(), "--tokenizer", "byte"},
       "latin1.txt is not UTF-8 text: invalid UTF-8 at byte offset 3"},
      {"bad file in a directory",
       {"--input", (dir / "mixed").string(), "--tokenizer", "byte"},
       "b.txt is not UTF-8 text: invalid UTF-8 at byte offset 4"},
      {"vocab too large",
       {"--input", ok_txt, "--tokenizer", "sentencepiece", "--vocab", "20000"},
       "larger than this corpus supports"},
      {"sentencepiece vocab below minimum",
       {"--input", ok_txt, "--tokenizer", "sentencepiece", "--vocab", "50"},
       "at least 262"},
      {"byte vocab below minimum",
       {"--input", ok_txt, "--tokenizer", "byte", "--vocab", "200"},
       "at least 258"},
      {"unknown tokenizer",
       {"--input", ok_txt, "--tokenizer", "bpe"},
       "valid kinds: byte, sentencepiece"},
      {"missing tokenizer", {"--input", ok_txt}, "--tokenizer is required"},
      {"fraction out of range",
       {"--input", ok_txt, "--tokenizer", "byte", "--validation-fraction", "1.5"},
       "must lie in [0, 1)"},
      {"split of one document",
       {"--input", (dir / "one.txt").string(), "--tokenizer", "byte", "--validation-fraction",
        "0.1"},
       "needs at least 2 documents"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"data", "prepare"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    args.insert(args.end(), {"--output", (dir / "out" / "bad").string()});
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.fragment), std::string::npos) << c.name << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.name << ": " << r.err;
    EXPECT_EQ(files_named(dir / "out", "bad"), std::vector<std::string>{}) << c.name;
  }

  // An output location that cannot be created: its parent is a regular file.
  const auto r = run_cli({"data", "prepare", "--input", ok_txt, "--tokenizer", "byte", "--output",
                          (dir / "a_file" / "sub" / "x").string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("cannot create the output directory"), std::string::npos) << r.err;

  const auto no_action = run_cli({"data"});
  EXPECT_EQ(no_action.exit_code, 2);
  EXPECT_NE(no_action.err.find("valid actions: prepare, inspect"), std::string::npos)
      << no_action.err;
  const auto bad_action = run_cli({"data", "shuffle"});
  EXPECT_EQ(bad_action.exit_code, 2);
  EXPECT_NE(bad_action.err.find("unknown action 'shuffle'"), std::string::npos) << bad_action.err;
}

TEST(DataPrepare, AFailedRunKeepsAnEarlierDatasetIntact) {
  TempDir dir;
  test::write_file(dir / "ok.txt", test_corpus::fortune_file(test_corpus::documents(20)));
  test::write_file(dir / "bad.txt", "\xFF");
  const std::string prefix = (dir / "d").string();
  ASSERT_EQ(run_cli({"data", "prepare", "--input", (dir / "ok.txt").string(), "--tokenizer", "byte",
                     "--output", prefix})
                .exit_code,
            0);
  const std::string before = test::read_file(prefix + ".idx");
  EXPECT_EQ(run_cli({"data", "prepare", "--input", (dir / "bad.txt").string(), "--tokenizer",
                     "byte", "--output", prefix})
                .exit_code,
            2);
  EXPECT_EQ(test::read_file(prefix + ".idx"), before);
  EXPECT_EQ(files_named(dir.path(), "d").size(), 4u) << "a temporary was left behind";
}

TEST(DataInspect, SummarisesADatasetAndReportsDamagedFiles) {
  TempDir dir;
  const auto documents = test_corpus::documents(12);
  test::write_file(dir / "in.txt", test_corpus::fortune_file(documents));
  const std::string prefix = (dir / "d").string();
  ASSERT_EQ(run_cli({"data", "prepare", "--input", (dir / "in.txt").string(), "--tokenizer", "byte",
                     "--output", prefix})
                .exit_code,
            0);
  const auto r = run_cli({"data", "inspect", prefix});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("12 documents, 12 sequences"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tokenizer: byte, vocab 258"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(documents[0].substr(0, 20)), std::string::npos) << r.out;

  const std::string idx = test::read_file(prefix + ".idx");
  test::write_file(prefix + ".idx", idx.substr(0, idx.size() - 3));
  auto damaged = run_cli({"data", "inspect", prefix});
  EXPECT_EQ(damaged.exit_code, 2);
  EXPECT_NE(damaged.err.find("d.idx is truncated"), std::string::npos) << damaged.err;

  test::write_file(prefix + ".idx", idx);
  const std::string bin = test::read_file(prefix + ".bin");
  test::write_file(prefix + ".bin", bin.substr(0, bin.size() / 2));
  damaged = run_cli({"data", "inspect", prefix});
  EXPECT_EQ(damaged.exit_code, 2);
  EXPECT_NE(damaged.err.find("d.bin is truncated"), std::string::npos) << damaged.err;

  test::write_file(prefix + ".idx", "PK\x03\x04 a zip file, not an index");
  damaged = run_cli({"data", "inspect", prefix});
  EXPECT_EQ(damaged.exit_code, 2);
  EXPECT_NE(damaged.err.find("is not a Megatron indexed dataset"), std::string::npos)
      << damaged.err;
}

}  // namespace
}  // namespace metamorph::data

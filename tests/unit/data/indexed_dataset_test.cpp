// The MMIDIDX reader against files built byte by byte from the format description, our writer
// against the reader and against numpy, and every kind of damaged file against its message.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "runtime/core/error.hpp"
#include "runtime/data/indexed_dataset.hpp"
#include "runtime/data/indexed_dataset_writer.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::data {
namespace {

using test::TempDir;

template <class T>
void put(std::string& bytes, T value) {
  char raw[sizeof(T)];
  std::memcpy(raw, &value, sizeof(T));
  bytes.append(raw, sizeof(T));
}

// Three documents: [5 7 9], then a document of two sequences [1 2] [3], then [65535] (uint16).
struct HandMade {
  std::string idx, bin;
};

HandMade hand_made() {
  HandMade files;
  files.idx.append("MMIDIDX\0\0", 9);
  put<std::uint64_t>(files.idx, 1);
  put<std::uint8_t>(files.idx, 8);   // uint16
  put<std::uint64_t>(files.idx, 4);  // sequences
  put<std::uint64_t>(files.idx, 4);  // document index entries: 3 documents + 1
  for (std::int32_t length : {3, 2, 1, 1}) put(files.idx, length);
  for (std::int64_t offset : {0, 6, 10, 12}) put(files.idx, offset);
  for (std::int64_t start : {0, 1, 3, 4}) put(files.idx, start);
  for (std::uint16_t token : {5, 7, 9, 1, 2, 3, 65535}) put(files.bin, token);
  return files;
}

void write_pair(const TempDir& dir, const HandMade& files) {
  test::write_file(dir / "d.idx", files.idx);
  test::write_file(dir / "d.bin", files.bin);
}

TEST(IndexedDataset, ReadsAHandWrittenFile) {
  TempDir dir;
  write_pair(dir, hand_made());
  const IndexedDataset dataset((dir / "d").string());
  EXPECT_EQ(dataset.dtype(), DType::kUInt16);
  EXPECT_EQ(dataset.num_sequences(), 4);
  EXPECT_EQ(dataset.num_documents(), 3);
  EXPECT_EQ(dataset.num_tokens(), 7);
  EXPECT_EQ(dataset.sequence(0), (std::vector<std::int32_t>{5, 7, 9}));
  EXPECT_EQ(dataset.sequence(1), (std::vector<std::int32_t>{1, 2}));
  EXPECT_EQ(dataset.sequence(3), (std::vector<std::int32_t>{65535}));
  EXPECT_EQ(dataset.document(1), (std::vector<std::int32_t>{1, 2, 3}));
  EXPECT_EQ(dataset.document(2), (std::vector<std::int32_t>{65535}));
  EXPECT_EQ(dataset.document_start(3), 4);
  EXPECT_EQ(dataset.document_first_token(2), 6);
}

TEST(IndexedDataset, WriterRoundTripsAndMatchesTheHandWrittenBytes) {
  TempDir dir;
  StagedFiles staging;
  IndexedDatasetWriter writer((dir / "ours").string(), 65536 - 37, staging);
  writer.add_sequence(std::vector<std::int32_t>{5, 7, 9});
  writer.end_document();
  writer.add_sequence(std::vector<std::int32_t>{1, 2});
  writer.add_sequence(std::vector<std::int32_t>{3});
  writer.end_document();
  writer.add_document(std::vector<std::int32_t>{65535 - 37});
  writer.finish();
  EXPECT_FALSE(std::filesystem::exists(dir / "ours.idx")) << "visible before commit";
  staging.commit();
  HandMade expected = hand_made();
  // Same layout, last token 65498 (the vocabulary is below 65500, so uint16 is chosen).
  expected.bin.resize(expected.bin.size() - 2);
  put<std::uint16_t>(expected.bin, 65535 - 37);
  EXPECT_EQ(test::read_file(dir / "ours.idx"), expected.idx);
  EXPECT_EQ(test::read_file(dir / "ours.bin"), expected.bin);
}

TEST(IndexedDataset, LargeVocabularyUsesInt32) {
  TempDir dir;
  const std::string prefix = (dir / "big").string();
  write_indexed_dataset(prefix, 70000, {{0, 69999, 65500}, {12}});
  const IndexedDataset dataset(prefix);
  EXPECT_EQ(dataset.dtype(), DType::kInt32);
  EXPECT_EQ(dataset.document(0), (std::vector<std::int32_t>{0, 69999, 65500}));
  EXPECT_EQ(dataset.document(1), (std::vector<std::int32_t>{12}));
  EXPECT_EQ(best_fitting_dtype(65499), DType::kUInt16);
  EXPECT_EQ(best_fitting_dtype(65500), DType::kInt32);
}

TEST(IndexedDataset, NumpyReadsOurFilesThePerFormatWay) {
  TempDir dir;
  const std::string prefix = (dir / "np").string();
  std::vector<std::vector<std::int32_t>> documents;
  for (int d = 0; d < 20; ++d) {
    std::vector<std::int32_t> tokens;
    for (int t = 0; t < 1 + (d * 7) % 13; ++t) tokens.push_back((d * 131 + t * 17) % 4000);
    documents.push_back(tokens);
  }
  write_indexed_dataset(prefix, 4000, documents);
  std::string expected;
  for (const auto& document : documents) {
    for (std::size_t i = 0; i < document.size(); ++i) {
      if (i > 0) expected.push_back(' ');
      expected.append(std::to_string(document[i]));
    }
    expected += "\n";
  }
  const std::string script = METAMORPH_DATA_REFERENCE_DIR "/read_mmidx.py";
  const auto result = test::run_shell(test::python() + " " + script + " " + prefix);
  ASSERT_EQ(result.exit_code, 0) << result.out;
  EXPECT_EQ(result.out, expected);
}

// Loads the pair and returns the InputError's message ("" when it loads).
std::string load_error(const TempDir& dir, const HandMade& files) {
  write_pair(dir, files);
  try {
    IndexedDataset dataset((dir / "d").string());
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(IndexedDataset, RejectsDamagedOrForeignFiles) {
  TempDir dir;
  const auto expect_error = [&](HandMade files, const std::string& fragment) {
    const std::string message = load_error(dir, files);
    EXPECT_NE(message.find(fragment), std::string::npos)
        << "wanted \"" << fragment << "\", got: " << message;
  };
  HandMade files = hand_made();

  HandMade foreign = files;
  foreign.idx[0] = 'X';
  expect_error(foreign, "d.idx is not a Megatron indexed dataset");
  expect_error({files.idx.substr(0, 20), files.bin}, "d.idx is truncated");
  expect_error({files.idx.substr(0, files.idx.size() - 8), files.bin}, "d.idx is truncated");
  expect_error({files.idx + "x", files.bin}, "unexpected bytes");

  HandMade version = files;
  version.idx[9] = 2;
  expect_error(version, "unsupported index version 2");
  HandMade dtype = files;
  dtype.idx[17] = 9;
  expect_error(dtype, "unknown dtype code 9");
  dtype.idx[17] = 7;
  expect_error(dtype, "float32");
  HandMade huge = files;
  std::memset(huge.idx.data() + 18, 0xFF, 8);
  expect_error(huge, "truncated");

  expect_error({files.idx, files.bin.substr(0, 13)}, "d.bin is truncated");
  expect_error({files.idx, files.bin + "zz"}, "d.bin has 2 bytes beyond");

  HandMade offsets = files;  // sequence 2 claims byte 8 instead of 10
  offsets.idx[kIndexHeaderBytes + 16 + 16] = 8;
  expect_error(offsets, "sequence 2 starts at byte 8");
  HandMade documents = files;  // document index [0, 1, 0, 4]: decreasing
  documents.idx[kIndexHeaderBytes + 16 + 32 + 16] = 0;
  expect_error(documents, "entries must not decrease");
  HandMade last = files;  // document index ends at 3, not at the 4 sequences
  last.idx[kIndexHeaderBytes + 16 + 32 + 24] = 3;
  expect_error(last, "must end at the sequence count 4");

  std::filesystem::remove(dir / "d.bin");
  try {
    IndexedDataset dataset((dir / "d").string());
    ADD_FAILURE() << "a missing .bin must be reported";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("d.bin"), std::string::npos) << e.what();
  }
}

TEST(IndexedDataset, NegativeTokensInASignedFileAreReportedOnRead) {
  TempDir dir;
  HandMade files = hand_made();
  files.idx[17] = 3;  // int16: 65535 reads as -1
  write_pair(dir, files);
  const IndexedDataset dataset((dir / "d").string());
  EXPECT_EQ(dataset.document(0), (std::vector<std::int32_t>{5, 7, 9}));
  EXPECT_THROW(dataset.document(2), InputError);
}

}  // namespace
}  // namespace metamorph::data

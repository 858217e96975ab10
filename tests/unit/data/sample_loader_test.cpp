// The loader against an independent picture of the data: the token stream rebuilt here from the
// documents, windows cut by hand, and the layout- and resume-invariance of the global order.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "runtime/core/error.hpp"
#include "runtime/data/indexed_dataset_writer.hpp"
#include "runtime/data/keyed_permutation.hpp"
#include "runtime/data/sample_loader.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::data {
namespace {

using Tokens = std::vector<std::int32_t>;

// Documents of varied lengths whose tokens name their position: document d, token t -> d*100+t.
std::vector<Tokens> make_documents(int count) {
  std::vector<Tokens> documents;
  for (int d = 0; d < count; ++d) {
    Tokens tokens;
    const int length = 1 + (d * 37) % 23;
    for (int t = 0; t < length; ++t) tokens.push_back(d * 100 + t);
    documents.push_back(tokens);
  }
  return documents;
}

class SampleLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    documents_ = make_documents(60);
    prefix_ = (dir_ / "corpus").string();
    write_indexed_dataset(prefix_, 6000, documents_);
    dataset_ = std::make_unique<IndexedDataset>(prefix_);
  }

  LoaderOptions options(std::int64_t seq, double validation = 0.0) const {
    LoaderOptions o;
    o.seq = seq;
    o.seed = 1234;
    o.validation_fraction = validation;
    return o;
  }

  // Every sample of batches [0, steps) as one rank set would see them, ranks concatenated.
  std::vector<Tokens> run(const LoaderOptions& o, int dp_size, std::int64_t global_batch,
                          int steps) const {
    std::vector<SampleLoader> loaders;
    for (int r = 0; r < dp_size; ++r) loaders.emplace_back(*dataset_, o);
    std::vector<Tokens> samples;
    const std::int64_t local = global_batch / dp_size;
    for (int step = 0; step < steps; ++step) {
      for (int r = 0; r < dp_size; ++r) {
        Tokens buffer(static_cast<std::size_t>(local * (o.seq + 1)));
        loaders[static_cast<std::size_t>(r)].next_batch(global_batch, r, dp_size, buffer.data());
        for (std::int64_t i = 0; i < local; ++i)
          samples.emplace_back(buffer.begin() + i * (o.seq + 1),
                               buffer.begin() + (i + 1) * (o.seq + 1));
      }
    }
    return samples;
  }

  test::TempDir dir_;
  std::vector<Tokens> documents_;
  std::string prefix_;
  std::unique_ptr<IndexedDataset> dataset_;
};

TEST(KeyedPermutation, IsABijectionThatDependsOnSeedAndRound) {
  for (std::uint64_t n : {1u, 2u, 3u, 5u, 16u, 17u, 1000u, 4097u}) {
    const KeyedPermutation p(n, 7, "test", 0);
    std::set<std::uint64_t> images;
    for (std::uint64_t i = 0; i < n; ++i) {
      const std::uint64_t image = p(i);
      ASSERT_LT(image, n);
      images.insert(image);
    }
    EXPECT_EQ(images.size(), n) << "size " << n;
  }
  const auto listing = [](std::uint64_t seed, std::uint64_t round) {
    const KeyedPermutation p(1000, seed, "test", round);
    std::vector<std::uint64_t> out;
    for (std::uint64_t i = 0; i < 1000; ++i) out.push_back(p(i));
    return out;
  };
  EXPECT_EQ(listing(7, 0), listing(7, 0));
  EXPECT_NE(listing(7, 0), listing(8, 0));
  EXPECT_NE(listing(7, 0), listing(7, 1));
  // Not the identity, and not close to it.
  const auto order = listing(7, 0);
  int fixed = 0;
  for (std::uint64_t i = 0; i < order.size(); ++i) fixed += order[i] == i;
  EXPECT_LT(fixed, 20);
}

TEST_F(SampleLoaderTest, PackedSamplesAreWindowsOfTheDocumentStream) {
  Tokens stream;
  for (const auto& d : documents_) stream.insert(stream.end(), d.begin(), d.end());
  const std::int64_t seq = 16;
  LoaderOptions o = options(seq);
  o.shuffle = false;
  const SampleLoader loader(*dataset_, o);
  ASSERT_EQ(loader.samples_per_epoch(), static_cast<std::int64_t>(stream.size() - 1) / seq);
  Tokens sample(seq + 1);
  for (std::int64_t i = 0; i < loader.samples_per_epoch(); ++i) {
    loader.sample(i, sample.data());
    const Tokens expected(stream.begin() + i * seq, stream.begin() + i * seq + seq + 1);
    ASSERT_EQ(sample, expected) << "sample " << i;
  }
}

TEST_F(SampleLoaderTest, ShuffledEpochVisitsEverySampleOnceAndEpochsDiffer) {
  const std::int64_t seq = 8;
  LoaderOptions plain = options(seq);
  plain.shuffle = false;
  const SampleLoader ordered(*dataset_, plain);
  const SampleLoader shuffled(*dataset_, options(seq));
  const std::int64_t n = shuffled.samples_per_epoch();
  std::multiset<Tokens> expected, epoch0, epoch1;
  std::vector<Tokens> first, second;
  Tokens sample(seq + 1);
  for (std::int64_t i = 0; i < n; ++i) {
    ordered.sample(i, sample.data());
    expected.insert(sample);
    shuffled.sample(i, sample.data());
    epoch0.insert(sample);
    first.push_back(sample);
    shuffled.sample(n + i, sample.data());
    epoch1.insert(sample);
    second.push_back(sample);
  }
  EXPECT_EQ(epoch0, expected);
  EXPECT_EQ(epoch1, expected);
  EXPECT_NE(first, second);
}

TEST_F(SampleLoaderTest, GlobalOrderIsTheSameOnOneTwoAndFourRanks) {
  const LoaderOptions o = options(12);
  // 7 steps of 8 run past the end of an epoch.
  const auto one = run(o, 1, 8, 7);
  ASSERT_GT(one.size(), 0u);
  EXPECT_EQ(run(o, 2, 8, 7), one);
  EXPECT_EQ(run(o, 4, 8, 7), one);
  // And a rank's slice is the contiguous block of global indices.
  SampleLoader loader(*dataset_, o);
  Tokens mine(2 * 13), expected(13);
  loader.next_batch(8, 3, 4, mine.data());
  loader.sample(6, expected.data());
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), mine.begin()));
  EXPECT_EQ(loader.consumed_samples(), 8);
}

TEST_F(SampleLoaderTest, ResumeFromASavedPositionContinuesExactly) {
  const LoaderOptions o = options(12);
  const auto uninterrupted = run(o, 2, 6, 9);
  SampleLoader before(*dataset_, o);
  Tokens buffer(6 * 13);
  for (int step = 0; step < 4; ++step) before.next_batch(6, 0, 1, buffer.data());
  const std::string saved = before.position().dump();

  // The resumed run uses another layout: 3 ranks of 2 instead of 1 rank of 6.
  std::vector<Tokens> resumed(uninterrupted.begin(), uninterrupted.begin() + 24);
  std::vector<SampleLoader> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.emplace_back(*dataset_, o);
    ranks.back().restore(nlohmann::json::parse(saved));
  }
  for (int step = 4; step < 9; ++step) {
    for (int r = 0; r < 3; ++r) {
      Tokens local(2 * 13);
      ranks[static_cast<std::size_t>(r)].next_batch(6, r, 3, local.data());
      resumed.emplace_back(local.begin(), local.begin() + 13);
      resumed.emplace_back(local.begin() + 13, local.end());
    }
  }
  EXPECT_EQ(resumed, uninterrupted);
}

TEST_F(SampleLoaderTest, RestoreRejectsAPositionFromOtherOptions) {
  SampleLoader loader(*dataset_, options(12));
  nlohmann::json position = loader.position();
  SampleLoader other(*dataset_, options(10));
  try {
    other.restore(position);
    ADD_FAILURE() << "restore must reject a position taken with another seq";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("seq"), std::string::npos) << e.what();
  }
  position["consumed_samples"] = -1;
  EXPECT_THROW(loader.restore(position), InputError);
  EXPECT_THROW(loader.restore(nlohmann::json::array()), InputError);
}

TEST_F(SampleLoaderTest, TrainAndValidationSplitsAreDisjointAndCoverEveryDocument) {
  const auto train = split_documents_of(60, 0.1, Split::kTrain);
  const auto validation = split_documents_of(60, 0.1, Split::kValidation);
  EXPECT_EQ(validation.size(), 6u);
  std::set<std::int64_t> all(train.begin(), train.end());
  for (const auto d : validation) EXPECT_TRUE(all.insert(d).second) << "document " << d;
  EXPECT_EQ(all.size(), 60u);
  // Spread over the corpus, not its tail.
  EXPECT_LT(validation.front(), 54);

  // No sample of one split holds a token of the other (tokens encode their document).
  const auto documents_in = [&](Split split) {
    LoaderOptions o = options(5, 0.1);
    o.split = split;
    const SampleLoader loader(*dataset_, o);
    std::set<std::int32_t> seen;
    Tokens sample(6);
    for (std::int64_t i = 0; i < loader.samples_per_epoch(); ++i) {
      loader.sample(i, sample.data());
      for (const auto token : sample) seen.insert(token / 100);
    }
    return seen;
  };
  const auto train_seen = documents_in(Split::kTrain);
  for (const auto d : documents_in(Split::kValidation)) {
    EXPECT_EQ(train_seen.count(d), 0u) << "document " << d << " is on both sides";
    EXPECT_TRUE(std::binary_search(validation.begin(), validation.end(), d));
  }
  EXPECT_THROW(validation_document_count(1, 0.5), InputError);
  EXPECT_THROW(validation_document_count(10, 1.0), InputError);
  EXPECT_EQ(validation_document_count(10, 0.01), 1);
}

TEST_F(SampleLoaderTest, PadAndDropModesKeepDocumentBoundaries) {
  const std::int64_t seq = 6;
  LoaderOptions o = options(seq);
  o.shuffle = false;
  o.mode = SampleMode::kPad;
  o.pad_id = 9999;
  Tokens expected_pad, expected_drop;
  std::int64_t pad_samples = 0, drop_samples = 0;
  for (const auto& d : documents_) {
    for (std::size_t start = 0; start + 1 < d.size(); start += seq) {
      Tokens window(d.begin() + static_cast<std::ptrdiff_t>(start),
                    d.begin() + static_cast<std::ptrdiff_t>(std::min(d.size(), start + seq + 1)));
      const bool full = window.size() == static_cast<std::size_t>(seq + 1);
      if (full) {
        expected_drop.insert(expected_drop.end(), window.begin(), window.end());
        ++drop_samples;
      }
      window.resize(seq + 1, 9999);
      expected_pad.insert(expected_pad.end(), window.begin(), window.end());
      ++pad_samples;
    }
  }
  const auto all_samples = [&](const LoaderOptions& options_) {
    const SampleLoader loader(*dataset_, options_);
    Tokens out(static_cast<std::size_t>(loader.samples_per_epoch() * (seq + 1)));
    for (std::int64_t i = 0; i < loader.samples_per_epoch(); ++i)
      loader.sample(i, out.data() + i * (seq + 1));
    return out;
  };
  EXPECT_EQ(SampleLoader(*dataset_, o).samples_per_epoch(), pad_samples);
  EXPECT_EQ(all_samples(o), expected_pad);
  o.mode = SampleMode::kDrop;
  EXPECT_EQ(SampleLoader(*dataset_, o).samples_per_epoch(), drop_samples);
  EXPECT_EQ(all_samples(o), expected_drop);
  o.mode = SampleMode::kPad;
  o.pad_id.reset();
  EXPECT_THROW(SampleLoader(*dataset_, o), InputError);
}

TEST_F(SampleLoaderTest, BadSizesAreInputErrors) {
  EXPECT_THROW(SampleLoader(*dataset_, options(0)), InputError);
  EXPECT_THROW(SampleLoader(*dataset_, options(100000)), InputError);
  SampleLoader loader(*dataset_, options(4));
  Tokens buffer(100);
  EXPECT_THROW(loader.next_batch(6, 0, 4, buffer.data()), InputError);
  EXPECT_THROW(loader.next_batch(4, 4, 4, buffer.data()), InputError);
  EXPECT_THROW(loader.next_batch(0, 0, 1, buffer.data()), InputError);
}

}  // namespace
}  // namespace metamorph::data

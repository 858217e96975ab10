// BackgroundSave: the rank files are written by a thread while the caller goes on, and the
// commit is the ordinary protocol's: the same checkpoint as save_checkpoint, the previous one
// untouched until every rank has written and agreed, failures reported on every rank.
#include "runtime/checkpoint/background_save.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"

namespace metamorph::test {
namespace {

namespace fs = std::filesystem;

class BackgroundSaveTest : public ::testing::Test {
 protected:
  // Step 1 saved the ordinary way by two ranks.
  void SetUp() override {
    run_ranks(2, [&](int rank, const RankContext& context) {
      Arena arena;
      save_checkpoint(dir_.path(), make_parameters(config_, arena, {.world = 2, .rank = rank}),
                      sample_state(1), context);
    });
  }

  // The checkpoint at `path` loads into one rank with every element as filled, and verifies.
  bool loads_cleanly(const fs::path& path) {
    Arena arena;
    auto params = make_parameters(config_, arena, {}, false);
    load_checkpoint(path, params);
    return count_mismatches(params) == 0 && verify_checkpoint(path).empty();
  }

  static void wait_until_written(const BackgroundSave& save) {
    while (!save.written()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  TempDir dir_;
  ModelConfig config_ = tiny_config();
};

TEST_F(BackgroundSaveTest, CommitsOnlyInFinishAndGivesTheSameCheckpointAsASave) {
  std::vector<fs::path> committed(2);
  run_ranks(2, [&](int rank, const RankContext& context) {
    Arena arena;
    BackgroundSave save(dir_.path(), make_parameters(config_, arena, {.world = 2, .rank = rank}),
                        sample_state(2), context);
    EXPECT_EQ(save.step(), 2);
    wait_until_written(save);
    // Written but not committed: `latest` still names step 1 and step 2 is not a checkpoint.
    if (rank == 0) {
      EXPECT_EQ(read_file(dir_ / "latest"), "step_00000001\n");
      EXPECT_FALSE(fs::exists(dir_ / "step_00000002"));
    }
    committed[static_cast<std::size_t>(rank)] = save.finish();
  });
  EXPECT_EQ(committed[0], dir_ / "step_00000002");
  EXPECT_EQ(read_file(dir_ / "latest"), "step_00000002\n");
  EXPECT_TRUE(fs::exists(dir_ / "step_00000002" / "COMMITTED"));
  EXPECT_TRUE(loads_cleanly(dir_ / "step_00000002"));
  Arena arena;
  auto params = make_parameters(config_, arena, {}, false);
  EXPECT_EQ(load_checkpoint(dir_.path(), params).step, 2);
}

TEST_F(BackgroundSaveTest, AFailedWriteFailsFinishOnEveryRankAndKeepsLatest) {
  std::vector<std::string> errors(2);
  run_ranks(2, [&](int rank, const RankContext& context) {
    Arena arena;
    SaveOptions options;
    if (rank == 1)
      options.before_write = [](const fs::path&, const std::string&) {
        throw std::runtime_error("No space left on device");
      };
    BackgroundSave save(dir_.path(), make_parameters(config_, arena, {.world = 2, .rank = rank}),
                        sample_state(2), context, options);
    wait_until_written(save);
    try {
      save.finish();
      ADD_FAILURE() << "rank " << rank << ": a failed save committed";
    } catch (const InputError& e) {
      errors[static_cast<std::size_t>(rank)] = e.what();
    }
  });
  EXPECT_NE(errors[1].find("No space left on device"), std::string::npos) << errors[1];
  EXPECT_NE(errors[1].find("rank_00001.h5"), std::string::npos) << errors[1];
  EXPECT_NE(errors[0].find("another rank failed"), std::string::npos) << errors[0];
  EXPECT_EQ(read_file(dir_ / "latest"), "step_00000001\n");
  EXPECT_FALSE(fs::exists(dir_ / "step_00000002"));
  EXPECT_TRUE(loads_cleanly(dir_.path()));
}

TEST_F(BackgroundSaveTest, ASaveNeverFinishedStaysAnIncompleteDirectory) {
  run_ranks(2, [&](int rank, const RankContext& context) {
    Arena arena;
    BackgroundSave save(dir_.path(), make_parameters(config_, arena, {.world = 2, .rank = rank}),
                        sample_state(2), context);
    // Destroyed without finish (a run that failed before committing).
  });
  EXPECT_TRUE(fs::exists(dir_ / "step_00000002.tmp"));
  EXPECT_FALSE(fs::exists(dir_ / "step_00000002.tmp" / "COMMITTED"));
  EXPECT_EQ(read_file(dir_ / "latest"), "step_00000001\n");
  EXPECT_EQ(resolve_checkpoint(dir_.path()), dir_ / "step_00000001");
}

}  // namespace
}  // namespace metamorph::test

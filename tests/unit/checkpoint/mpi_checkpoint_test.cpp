// Real ranks: every MPI process saves its shard through an MPI-backed RankContext, then loads a
// differently sharded copy; one rank failing mid-save aborts the commit on all of them.
#include <gtest/gtest.h>
#include <mpi.h>

#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"

namespace metamorph::test {
namespace {

namespace fs = std::filesystem;

RankContext mpi_context() {
  RankContext context;
  MPI_Comm_rank(MPI_COMM_WORLD, &context.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &context.world);
  context.all_ok = [](bool ok) {
    int mine = ok ? 1 : 0, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    return all != 0;
  };
  return context;
}

// A directory every rank sees: rank 0 creates it, the others learn its name.
class SharedDir {
 public:
  SharedDir() {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::string name;
    if (rank == 0) {
      owned_ = std::make_unique<TempDir>();
      name = owned_->path().string();
    }
    int size = static_cast<int>(name.size());
    MPI_Bcast(&size, 1, MPI_INT, 0, MPI_COMM_WORLD);
    name.resize(static_cast<std::size_t>(size));
    MPI_Bcast(name.data(), size, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = name;
  }
  ~SharedDir() { MPI_Barrier(MPI_COMM_WORLD); }  // nobody deletes it under another rank
  const fs::path& path() const { return path_; }

 private:
  std::unique_ptr<TempDir> owned_;
  fs::path path_;
};

TEST(CheckpointMpi, EveryRankSavesItsShardAndLoadsAnotherSharding) {
  SharedDir dir;
  const RankContext context = mpi_context();
  const auto config = tiny_config();
  Arena arena;
  const auto params = make_parameters(
      config, arena, {.world = context.world, .rank = context.rank, .split_dim = 0});
  const fs::path step = save_checkpoint(dir.path(), params, sample_state(6), context);
  EXPECT_EQ(step, dir.path() / "step_00000006");
  auto resharded = make_parameters(
      config, arena, {.world = context.world, .rank = context.rank, .split_dim = 1}, false);
  EXPECT_EQ(load_checkpoint(dir.path(), resharded).world_size, context.world);
  EXPECT_EQ(count_mismatches(resharded), 0);
  auto whole = make_parameters(config, arena, {}, false);
  load_checkpoint(dir.path(), whole);
  EXPECT_EQ(count_mismatches(whole), 0);
}

TEST(CheckpointMpi, OneRankFailingAbortsTheCommitOnAll) {
  SharedDir dir;
  const RankContext context = mpi_context();
  const auto config = tiny_config();
  Arena arena;
  const auto params =
      make_parameters(config, arena, {.world = context.world, .rank = context.rank});
  save_checkpoint(dir.path(), params, sample_state(1), context);
  SaveOptions options;
  if (context.rank == context.world - 1)
    options.before_write = [](const fs::path&, const std::string& tensor) {
      if (tensor == "model.norm.weight") throw std::runtime_error("injected write failure");
    };
  EXPECT_THROW(save_checkpoint(dir.path(), params, sample_state(2), context, options), InputError);
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(read_file(dir.path() / "latest"), "step_00000001\n");
  EXPECT_FALSE(fs::exists(dir.path() / "step_00000002"));
  EXPECT_TRUE(verify_checkpoint(dir.path()).empty());
}

}  // namespace
}  // namespace metamorph::test

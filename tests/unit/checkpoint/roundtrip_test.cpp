// Save then load: one rank, several simulated ranks, loads into other shardings, ZeRO-1 optimizer
// blocks, bf16 weights with fp32 masters, and the run state.
#include <gtest/gtest.h>

#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"

namespace metamorph::test {
namespace {

namespace fs = std::filesystem;

TEST(CheckpointRoundTrip, OneRankRestoresEveryBitAndTheState) {
  TempDir dir;
  Arena arena;
  const auto config = tiny_config();
  const auto saved = make_parameters(config, arena, {});
  const fs::path step_dir = save_checkpoint(dir.path(), saved, sample_state(7));
  EXPECT_EQ(step_dir, dir / "step_00000007");
  EXPECT_TRUE(fs::exists(step_dir / "COMMITTED"));
  EXPECT_EQ(read_file(dir / "latest"), "step_00000007\n");

  auto loaded = make_parameters(config, arena, {}, /*fill=*/false);
  ASSERT_GT(count_mismatches(loaded), 0);
  const CheckpointState state = load_checkpoint(dir.path(), loaded);
  EXPECT_EQ(count_mismatches(loaded), 0);
  const CheckpointState expected = sample_state(7);
  EXPECT_EQ(state.step, 7);
  EXPECT_EQ(state.tokens, expected.tokens);
  EXPECT_EQ(state.config, expected.config);
  EXPECT_EQ(state.layout, expected.layout);
  EXPECT_EQ(state.data_position, expected.data_position);
  EXPECT_EQ(state.rng, expected.rng);
  EXPECT_EQ(state.extra, expected.extra);
  EXPECT_EQ(state.format_version, 1);
  EXPECT_EQ(state.world_size, 1);
  EXPECT_FALSE(state.code_version.empty());
}

TEST(CheckpointRoundTrip, WithoutOptimizerLeavesMomentsAlone) {
  TempDir dir;
  Arena arena;
  const auto config = tiny_config();
  save_checkpoint(dir.path(), make_parameters(config, arena, {}), sample_state(1), {},
                  {.keep_last = 0, .with_optimizer = false, .before_write = {}});
  auto loaded = make_parameters(config, arena, {}, false);
  load_checkpoint(dir.path(), loaded, {.with_optimizer = false, .verify = false});
  for (const auto& p : loaded.all()) EXPECT_EQ(p.adam_m.data<float>()[0], 0.0f) << p.name;
  // Asking for moments that were never saved names the tensor and says what to do.
  try {
    load_checkpoint(dir.path(), loaded);
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.embed_tokens.weight"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("no optimizer state"), std::string::npos);
  }
}

struct Resharding {
  ShardLayout save;
  ShardLayout load;
};

void save_on_ranks(const fs::path& root, const ModelConfig& config, ShardLayout layout,
                   std::int64_t step) {
  run_ranks(layout.world, [&](int rank, const RankContext& base) {
    Arena arena;
    ShardLayout mine = layout;
    mine.rank = rank;
    RankContext context = base;
    if (layout.model_replicated) context.model_replica = rank;
    const auto params = make_parameters(config, arena, mine);
    save_checkpoint(root, params, sample_state(step), context);
  });
}

class CheckpointReshard : public ::testing::TestWithParam<Resharding> {};

TEST_P(CheckpointReshard, LoadsEveryRankOfAnotherLayout) {
  TempDir dir;
  const auto config = tiny_config();
  const Resharding& r = GetParam();
  save_on_ranks(dir.path(), config, r.save, 3);
  for (int rank = 0; rank < r.load.world; ++rank) {
    Arena arena;
    ShardLayout mine = r.load;
    mine.rank = rank;
    auto loaded = make_parameters(config, arena, mine, false);
    const auto state = load_checkpoint(dir.path(), loaded);
    EXPECT_EQ(state.world_size, r.save.world);
    EXPECT_EQ(count_mismatches(loaded), 0) << "load rank " << rank;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, CheckpointReshard,
    ::testing::Values(
        // 2 ranks split along dim 0 -> 4 ranks along dim 1, and -> 1 rank.
        Resharding{{.world = 2, .split_dim = 0}, {.world = 4, .split_dim = 1}},
        Resharding{{.world = 2, .split_dim = 0}, {.world = 1}},
        // 4 ranks along dim 1 -> 3 ranks (uneven) along dim 0.
        Resharding{{.world = 4, .split_dim = 1}, {.world = 3, .split_dim = 0}},
        // ZeRO-1: weights replicated, optimizer split along dim 0 -> plain 2-way dim 1.
        Resharding{{.world = 2, .optim_split_dim = 0, .model_replicated = true},
                   {.world = 2, .split_dim = 1}},
        // Plain layout -> ZeRO-1 over 4 ranks with optimizer blocks along dim 1.
        Resharding{{.world = 2, .split_dim = 1},
                   {.world = 4, .optim_split_dim = 1, .model_replicated = true}},
        // GPU-style bf16 weights with fp32 masters (ZeRO-1) -> bf16 again on another layout.
        Resharding{
            {.world = 2, .optim_split_dim = 0, .model_replicated = true, .bf16_weights = true},
            {.world = 2, .split_dim = 1, .bf16_weights = true}}));

// Tensors of several chunks (about 4 MiB each), sharded unevenly, loaded across chunk edges.
TEST(CheckpointRoundTrip, MultiChunkTensorsReshardAcrossChunkBoundaries) {
  TempDir dir;
  const std::vector<ParameterSpec> specs = {{"big.weight", {2503, 1100}, true},
                                            {"big.bias", {1500001}, false}};
  for (int world : {3, 1}) {
    run_ranks(world, [&](int rank, const RankContext& context) {
      Arena arena;
      const auto params = make_parameters(
          specs, arena, {.world = world, .rank = rank, .optimizer = false, .bf16_weights = false});
      save_checkpoint(dir.path(), params, sample_state(world), context);
    });
  }
  for (const ShardLayout& layout :
       {ShardLayout{.world = 2, .rank = 1, .split_dim = 0, .optimizer = false},
        ShardLayout{.world = 5, .rank = 2, .split_dim = 0, .optimizer = false},
        ShardLayout{.world = 2, .rank = 1, .split_dim = 1, .optimizer = false},
        ShardLayout{
            .world = 1, .rank = 0, .split_dim = 0, .optimizer = false, .bf16_weights = true}}) {
    for (std::int64_t step : {1, 3}) {
      Arena arena;
      auto loaded = make_parameters(specs, arena, layout, false);
      const auto dir_step = resolve_checkpoint(dir.path(), step);
      load_checkpoint(dir_step, loaded, {.with_optimizer = false, .verify = false});
      EXPECT_EQ(count_mismatches(loaded), 0)
          << "saved on " << step << " ranks, loaded as rank " << layout.rank << " of "
          << layout.world << " split along " << layout.split_dim;
    }
  }
}

// More ranks than rows: some ranks hold empty shards, which are written but map nothing.
TEST(CheckpointRoundTrip, EmptyShardsOfUnevenSplitsAreHarmless) {
  TempDir dir;
  const std::vector<ParameterSpec> specs = {{"small.weight", {2, 3}, true}};
  run_ranks(4, [&](int rank, const RankContext& context) {
    Arena arena;
    const auto params = make_parameters(specs, arena, {.world = 4, .rank = rank});
    CheckpointState state = sample_state(1);
    state.config = nlohmann::json::object();  // not a transformer: no config to check against
    save_checkpoint(dir.path(), params, state, context);
  });
  for (int rank = 0; rank < 3; ++rank) {
    Arena arena;
    auto loaded = make_parameters(specs, arena, {.world = 3, .rank = rank, .split_dim = 1}, false);
    load_checkpoint(dir.path(), loaded);
    EXPECT_EQ(count_mismatches(loaded), 0);
  }
  EXPECT_TRUE(verify_checkpoint(dir.path()).empty());
  const auto h5 = run_shell(python() + " -c \"import h5py, sys; f = h5py.File(sys.argv[1]); " +
                            "print(f['model']['small.weight'].shape)\" " +
                            (dir / "step_00000001" / "index.h5").string());
  EXPECT_EQ(h5.out, "(2, 3)\n") << h5.out;
}

TEST(CheckpointRoundTrip, Bf16WeightsKeepTheirBitsAndFp32LoadsTakeTheMaster) {
  TempDir dir;
  Arena arena;
  const auto config = tiny_config();
  save_checkpoint(dir.path(), make_parameters(config, arena, {.bf16_weights = true}),
                  sample_state(2));
  // Stored as 16-bit integers with a dtype attribute.
  const auto h5 = run_shell("h5dump -A -d /model/model.norm.weight " +
                            (dir / "step_00000002" / "rank_00000.h5").string());
  EXPECT_NE(h5.out.find("H5T_STD_U16LE"), std::string::npos) << h5.out;
  EXPECT_NE(h5.out.find("\"bf16\""), std::string::npos) << h5.out;
  // Same layout, bf16 again: bit-identical weights and masters.
  auto bf16 = make_parameters(config, arena, {.bf16_weights = true}, false);
  load_checkpoint(dir.path(), bf16);
  EXPECT_EQ(count_mismatches(bf16), 0);
  // A CPU run (fp32 weights) gets the fp32 masters, not the rounded bf16 weights.
  auto fp32 = make_parameters(config, arena, {}, false);
  load_checkpoint(dir.path(), fp32);
  EXPECT_EQ(count_mismatches(fp32), 0);
}

TEST(CheckpointRoundTrip, Fp32CheckpointLoadsIntoBf16ByRounding) {
  TempDir dir;
  Arena arena;
  const auto config = tiny_config();
  save_checkpoint(dir.path(), make_parameters(config, arena, {}), sample_state(2));
  auto bf16 = make_parameters(config, arena, {.bf16_weights = true}, false);
  load_checkpoint(dir.path(), bf16);
  EXPECT_EQ(count_mismatches(bf16), 0);  // bf16 value = round(fp32), master = fp32
}

TEST(CheckpointRoundTrip, ResolvesRootLatestStepAndNamedStep) {
  TempDir dir;
  Arena arena;
  const auto config = tiny_config();
  const auto params = make_parameters(config, arena, {});
  save_checkpoint(dir.path(), params, sample_state(10));
  save_checkpoint(dir.path(), params, sample_state(20));
  EXPECT_EQ(resolve_checkpoint(dir.path()), dir / "step_00000020");
  EXPECT_EQ(resolve_checkpoint(dir / "step_00000010"), dir / "step_00000010");
  EXPECT_EQ(resolve_checkpoint(dir.path(), 10), dir / "step_00000010");
  EXPECT_THROW(resolve_checkpoint(dir.path(), 15), InputError);
  // Without `latest` (a save died between its two renames) the newest committed step wins.
  fs::remove(dir / "latest");
  EXPECT_EQ(resolve_checkpoint(dir.path()), dir / "step_00000020");
}

TEST(CheckpointRoundTrip, SavingTheSameStepAgainReplacesIt) {
  TempDir dir;
  Arena arena;
  const auto config = tiny_config();
  const auto params = make_parameters(config, arena, {});
  save_checkpoint(dir.path(), params, sample_state(5));
  auto state = sample_state(5);
  state.tokens = 999;
  save_checkpoint(dir.path(), params, state);
  auto loaded = make_parameters(config, arena, {}, false);
  EXPECT_EQ(load_checkpoint(dir.path(), loaded).tokens, 999);
  EXPECT_FALSE(fs::exists(dir / "step_00000005.trash"));
}

TEST(CheckpointRetention, KeepLastKeepsTheNewestCommittedSteps) {
  TempDir dir;
  Arena arena;
  const auto params = make_parameters(tiny_config(), arena, {});
  for (int step = 1; step <= 5; ++step)
    save_checkpoint(dir.path(), params, sample_state(step), {},
                    {.keep_last = 2, .with_optimizer = true, .before_write = {}});
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path())) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step_00000004", "step_00000005"}));
}

TEST(CheckpointRetention, ZeroKeepsEverything) {
  TempDir dir;
  Arena arena;
  const auto params = make_parameters(tiny_config(), arena, {});
  for (int step = 1; step <= 3; ++step) save_checkpoint(dir.path(), params, sample_state(step));
  apply_retention(dir.path(), 0);
  EXPECT_TRUE(fs::exists(dir / "step_00000001"));
  EXPECT_THROW(apply_retention(dir.path(), -1), InputError);
}

}  // namespace
}  // namespace metamorph::test

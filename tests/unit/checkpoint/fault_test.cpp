// Bad input and faults: each gives an InputError (or a verify fault) naming the file and the
// tensor, and none damages the last good checkpoint.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include "runtime/checkpoint/mapped_range.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"

namespace metamorph::test {
namespace {

namespace fs = std::filesystem;

// The InputError message of `fn`, or a failure if it does not throw one.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an InputError";
  return {};
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string all_faults(const std::vector<CheckpointFault>& faults) {
  std::string text;
  for (const auto& f : faults) text += f.to_string() + "\n";
  return text;
}

class CheckpointFaults : public ::testing::Test {
 protected:
  // Two ranks, weights split along dim 0, saved as step 1.
  void SetUp() override {
    run_ranks(2, [&](int rank, const RankContext& context) {
      Arena arena;
      const auto params = make_parameters(config_, arena, {.world = 2, .rank = rank});
      save_checkpoint(dir_.path(), params, sample_state(1), context);
    });
    step_ = dir_ / "step_00000001";
  }

  std::string load_error() {
    return error_of([&] {
      Arena arena;
      auto params = make_parameters(config_, arena, {}, false);
      load_checkpoint(dir_.path(), params);
    });
  }

  bool loads_cleanly(const fs::path& path) {
    Arena arena;
    auto params = make_parameters(config_, arena, {}, false);
    load_checkpoint(path, params);
    return count_mismatches(params) == 0 && verify_checkpoint(path).empty();
  }

  TempDir dir_;
  ModelConfig config_ = tiny_config();
  fs::path step_;
};

TEST_F(CheckpointFaults, SoundCheckpointVerifies) {
  EXPECT_EQ(all_faults(verify_checkpoint(dir_.path())), "");
  EXPECT_TRUE(verify_checkpoint(dir_.path(), &config_).empty());
  EXPECT_TRUE(loads_cleanly(dir_.path()));
}

TEST_F(CheckpointFaults, MissingRankFileIsNamedWithItsTensor) {
  fs::remove(step_ / "rank_00001.h5");
  const std::string error = load_error();
  EXPECT_TRUE(contains(error, "rank_00001.h5")) << error;
  EXPECT_TRUE(contains(error, "model.embed_tokens.weight")) << error;
  EXPECT_TRUE(contains(error, "missing")) << error;
  const auto faults = all_faults(verify_checkpoint(dir_.path()));
  EXPECT_TRUE(contains(faults, "rank_00001.h5: missing file")) << faults;
}

TEST_F(CheckpointFaults, TruncatedFileIsNamed) {
  const fs::path file = step_ / "rank_00000.h5";
  fs::resize_file(file, fs::file_size(file) / 2);
  const std::string error = load_error();
  EXPECT_TRUE(contains(error, "rank_00000.h5")) << error;
  EXPECT_TRUE(contains(error, "tensor model.embed_tokens.weight")) << error;
  const auto faults = all_faults(verify_checkpoint(dir_.path()));
  EXPECT_TRUE(contains(faults, "truncated")) << faults;
  EXPECT_TRUE(contains(faults, "rank_00000.h5")) << faults;
}

TEST_F(CheckpointFaults, FlippedDataByteFailsItsChecksum) {
  // Find the bytes of rank 1's down_proj shard of layer 1 in its file and flip one.
  const std::string name = "model.layers.1.mlp.down_proj.weight";
  const auto specs = parameter_specs(config_);
  const auto spec =
      std::find_if(specs.begin(), specs.end(), [&](auto& s) { return s.name == name; });
  const std::int64_t first_row = spec->shape[0] / 2;  // rank 1 holds rows [8, 16)
  std::string pattern;
  for (int i = 0; i < 4; ++i) {
    const float v = expected_value(name, Fill::model, first_row * spec->shape[1] + i);
    pattern.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  const fs::path file = step_ / "rank_00001.h5";
  std::string bytes = read_file(file);
  const auto at = bytes.find(pattern);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 5] = static_cast<char>(bytes[at + 5] ^ 0x10);
  write_file(file, bytes);

  const std::string error = load_error();
  EXPECT_TRUE(contains(error, "rank_00001.h5")) << error;
  EXPECT_TRUE(contains(error, name)) << error;
  EXPECT_TRUE(contains(error, "Fletcher32")) << error;
  // A load that does not touch the damaged tensor succeeds, unless asked to verify everything.
  Arena arena;
  auto others = make_parameters(config_, arena, {}, false);
  while (others.all().back().name != "model.layers.1.post_attention_layernorm.weight")
    others.all().pop_back();
  EXPECT_NO_THROW(load_checkpoint(dir_.path(), others));
  const std::string verified = error_of(
      [&] { load_checkpoint(dir_.path(), others, {.with_optimizer = true, .verify = true}); });
  EXPECT_TRUE(contains(verified, name) && contains(verified, "rank_00001.h5")) << verified;

  const auto faults = verify_checkpoint(dir_.path());
  ASSERT_EQ(faults.size(), 1u) << all_faults(faults);
  EXPECT_EQ(faults[0].tensor, name);
  EXPECT_EQ(faults[0].file, file.string());
}

// A tensor of several chunks: a flipped byte in its second chunk fails every load that reads that
// chunk, whether the flipped row is one the shard copies straight into its tensor or one it only
// checks (rows of the chunk before or after the shard's), or the chunk is staged (a column
// split), and no load that skips the chunk.
TEST(CheckpointChunkFaults, FlippedByteFailsEveryReadPathThatTouchesItsChunk) {
  TempDir dir;
  const std::string name = "big.weight";
  const std::vector<ParameterSpec> specs = {{name, {2503, 1100}, true}};  // 953 rows per chunk
  {
    Arena arena;
    const auto params = make_parameters(specs, arena, {.optimizer = false});
    CheckpointState state = sample_state(1);
    state.config = nlohmann::json::object();  // not a transformer
    save_checkpoint(dir.path(), params, state);
  }
  const std::int64_t row = 1500;  // in the chunk of rows [953, 1906)
  std::string pattern;
  for (int i = 0; i < 4; ++i) {
    const float v = expected_value(name, Fill::model, row * 1100 + i);
    pattern.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  const fs::path file = dir / "step_00000001" / "rank_00000.h5";
  std::string bytes = read_file(file);
  const auto at = bytes.find(pattern);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 6] = static_cast<char>(bytes[at + 6] ^ 0x01);
  write_file(file, bytes);

  for (const ShardLayout& layout :
       {ShardLayout{.world = 1, .optimizer = false},                             // whole chunks
        ShardLayout{.world = 2, .rank = 1, .split_dim = 0, .optimizer = false},  // flip in its rows
        ShardLayout{.world = 2, .rank = 0, .split_dim = 0, .optimizer = false},  // after its rows
        ShardLayout{.world = 3, .rank = 2, .split_dim = 0, .optimizer = false},  // before its rows
        ShardLayout{.world = 2, .rank = 0, .split_dim = 1, .optimizer = false}}) {  // staged
    Arena arena;
    auto params = make_parameters(specs, arena, layout, false);
    const std::string error = error_of([&] { load_checkpoint(dir.path(), params); });
    EXPECT_TRUE(contains(error, file.string())) << error;
    EXPECT_TRUE(contains(error, name)) << error;
    EXPECT_TRUE(contains(error, "Fletcher32")) << error;
    EXPECT_TRUE(contains(error, "chunk at row 953")) << error;
  }
  Arena arena;
  auto first_rows = make_parameters(specs, arena, {.world = 5, .rank = 0, .optimizer = false},
                                    false);  // rows [0, 501): the first chunk only
  EXPECT_NO_THROW(load_checkpoint(dir.path(), first_rows));
  EXPECT_EQ(count_mismatches(first_rows), 0);
}

TEST(MappedRange, ReadsAnyRangeAndRefusesOnePastTheEndOfTheFile) {
  TempDir dir;
  std::string bytes(10000, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7);
  write_file(dir / "f.bin", bytes);
  {
    const checkpoint::MappedRange range(dir / "f.bin", 4097, 5000);  // not on a page boundary
    EXPECT_EQ(std::memcmp(range.at(4097, 5000), bytes.data() + 4097, 5000), 0);
    EXPECT_EQ(std::memcmp(range.at(9000, 97), bytes.data() + 9000, 97), 0);
  }
  const std::string error =
      error_of([&] { checkpoint::MappedRange range(dir / "f.bin", 9000, 1001); });
  EXPECT_TRUE(contains(error, "f.bin")) << error;
  EXPECT_TRUE(contains(error, "truncated")) << error;
  EXPECT_TRUE(contains(error_of([&] { checkpoint::MappedRange range(dir / "none.bin", 0, 1); }),
                       "none.bin"));
}

TEST_F(CheckpointFaults, ConfigThatDoesNotMatchTheShapesIsNamed) {
  auto json = tiny_config_json();
  json["intermediate_size"] = 32;
  const ModelConfig other = model_config_from_json(json);
  const std::string error = error_of([&] {
    Arena arena;
    auto params = make_parameters(other, arena, {}, false);
    load_checkpoint(dir_.path(), params);
  });
  EXPECT_TRUE(contains(error, "model.layers.0.mlp.gate_proj.weight")) << error;
  EXPECT_TRUE(contains(error, "[24, 16]")) << error;
  EXPECT_TRUE(contains(error, "[32, 16]")) << error;
  const auto faults = all_faults(verify_checkpoint(dir_.path(), &other));
  EXPECT_TRUE(contains(faults,
                       "model.layers.1.mlp.down_proj.weight: shape [16, 24], the given "
                       "config expects [16, 32]"))
      << faults;
}

TEST_F(CheckpointFaults, NewerFormatVersionIsRefused) {
  {
    const hid_t file = H5Fopen((step_ / "index.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t attribute = H5Aopen(file, "format_version", H5P_DEFAULT);
    const std::int64_t version = 99;
    H5Awrite(attribute, H5T_NATIVE_INT64, &version);
    H5Aclose(attribute);
    H5Fclose(file);
  }
  const std::string error = load_error();
  EXPECT_TRUE(contains(error, "index.h5")) << error;
  EXPECT_TRUE(contains(error, "format version 99 is newer")) << error;
  EXPECT_TRUE(contains(all_faults(verify_checkpoint(dir_.path())), "newer")) << error;
}

TEST(CheckpointNotACheckpoint, SaysSoAndNamesThePath) {
  TempDir dir;
  write_file(dir / "notes.txt", "hello");
  Arena arena;
  auto params = make_parameters(tiny_config(), arena, {}, false);
  for (const fs::path& path : {dir.path(), dir / "notes.txt", dir / "nowhere"}) {
    const std::string error = error_of([&] { load_checkpoint(path, params); });
    EXPECT_TRUE(contains(error, path.string())) << error;
    EXPECT_FALSE(verify_checkpoint(path).empty());
  }
  EXPECT_TRUE(contains(error_of([&] { load_checkpoint(dir.path(), params); }),
                       "not a metamorph checkpoint"));
}

TEST_F(CheckpointFaults, FailureMidSaveOnOneRankAbortsAllAndKeepsLatest) {
  int writes = 0;
  std::vector<std::string> errors(2);
  run_ranks(2, [&](int rank, const RankContext& context) {
    Arena arena;
    const auto params = make_parameters(config_, arena, {.world = 2, .rank = rank});
    SaveOptions options;
    if (rank == 1)
      options.before_write = [&](const fs::path&, const std::string&) {
        if (++writes == 5) throw std::runtime_error("No space left on device");
      };
    errors[static_cast<std::size_t>(rank)] =
        error_of([&] { save_checkpoint(dir_.path(), params, sample_state(2), context, options); });
  });
  EXPECT_TRUE(contains(errors[1], "rank_00001.h5")) << errors[1];
  EXPECT_TRUE(contains(errors[1], "tensor model.layers.0.input_layernorm.weight (m)")) << errors[1];
  EXPECT_TRUE(contains(errors[1], "No space left on device")) << errors[1];
  EXPECT_TRUE(contains(errors[0], "another rank failed")) << errors[0];
  // The broken save is recognisably incomplete; the previous one is untouched and loads.
  EXPECT_EQ(read_file(dir_ / "latest"), "step_00000001\n");
  EXPECT_FALSE(fs::exists(dir_ / "step_00000002"));
  EXPECT_TRUE(fs::exists(dir_ / "step_00000002.tmp"));
  EXPECT_FALSE(fs::exists(dir_ / "step_00000002.tmp" / "COMMITTED"));
  EXPECT_TRUE(
      contains(error_of([&] { resolve_checkpoint(dir_ / "step_00000002.tmp"); }), "incomplete"));
  EXPECT_TRUE(loads_cleanly(dir_.path()));
  // Even with its marker (killed between COMMITTED and the rename) a .tmp is not a checkpoint.
  write_file(dir_ / "step_00000002.tmp" / "COMMITTED", "{}");
  EXPECT_TRUE(
      contains(error_of([&] { resolve_checkpoint(dir_ / "step_00000002.tmp"); }), "incomplete"));
  EXPECT_EQ(resolve_checkpoint(dir_.path()), step_);
}

// Runs `child` in a forked process and returns its exit status (or -signal).
int in_child(const std::function<int()>& child, const std::function<void(pid_t)>& parent = {}) {
  const pid_t pid = fork();
  if (pid == 0) _exit(child());
  if (parent) parent(pid);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

TEST_F(CheckpointFaults, FullDiskDuringSaveIsNamedAndKeepsLatest) {
  // A file size limit makes write() fail with EFBIG, as a full disk makes it fail with ENOSPC.
  const std::string message_file = (dir_ / "child-error.txt").string();
  const int status = in_child([&] {
    std::string message;
    try {
      Arena arena;
      const auto params = make_parameters(config_, arena, {});
      signal(SIGXFSZ, SIG_IGN);
      rlimit limit{16 << 10, 16 << 10};
      setrlimit(RLIMIT_FSIZE, &limit);
      save_checkpoint(dir_.path(), params, sample_state(2));
      return 3;
    } catch (const InputError& e) {
      message = e.what();
    }
    rlimit none{RLIM_INFINITY, RLIM_INFINITY};
    setrlimit(RLIMIT_FSIZE, &none);  // raising a soft limit back up to the hard one is allowed
    std::ofstream(message_file) << message;
    return 0;
  });
  ASSERT_EQ(status, 0) << "the save under a 16 KiB file size limit did not fail cleanly";
  const std::string message = read_file(message_file);
  EXPECT_TRUE(contains(message, "step_00000002.tmp/rank_00000.h5")) << message;
  EXPECT_TRUE(contains(message, "tensor ")) << message;
  EXPECT_EQ(read_file(dir_ / "latest"), "step_00000001\n");
  EXPECT_TRUE(loads_cleanly(dir_.path()));
}

TEST_F(CheckpointFaults, ProcessKilledAtAnyMomentOfSavingLeavesALoadableCheckpoint) {
  // A child saves steps 2, 3, ... (keep-last 2) until it is SIGKILLed at some arbitrary moment.
  for (int delay_ms : {5, 40, 120}) {
    const int status = in_child(
        [&] {
          Arena arena;
          const auto params = make_parameters(config_, arena, {});
          for (int step = 2;; ++step)
            save_checkpoint(dir_.path(), params, sample_state(step), {},
                            {.keep_last = 2, .with_optimizer = true, .before_write = {}});
          return 0;
        },
        [&](pid_t pid) {
          std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
          kill(pid, SIGKILL);
        });
    EXPECT_EQ(status, -SIGKILL);
    const fs::path latest = resolve_checkpoint(dir_.path());
    EXPECT_TRUE(loads_cleanly(dir_.path()))
        << "killed after " << delay_ms << " ms; latest " << latest;
  }
}

}  // namespace
}  // namespace metamorph::test

// The tools around checkpoints: `metamorph ckpt` inspect/verify exit codes and output, h5py
// reading whole tensors through index.h5, and Hugging Face safetensors import -> export.
#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "runtime/checkpoint/safetensors.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"

namespace metamorph::test {
namespace {

namespace fs = std::filesystem;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The scripts next to this file (a compile definition: ctest's environment is not needed).
fs::path script(const std::string& name) {
  return fs::path(METAMORPH_CHECKPOINT_TEST_DIR) / name;
}

void save_two_ranks(const fs::path& root, const ModelConfig& config, std::int64_t step) {
  run_ranks(2, [&](int rank, const RankContext& context) {
    Arena arena;
    const auto params = make_parameters(config, arena, {.world = 2, .rank = rank, .split_dim = 1});
    save_checkpoint(root, params, sample_state(step), context);
  });
}

TEST(CkptCli, VerifyExitsZeroWhenSoundAndOneNamingTheTensorAndFileWhenNot) {
  TempDir dir;
  save_two_ranks(dir.path(), tiny_config(), 4);
  auto ok = run_cli({"ckpt", "verify", dir.path().string()});
  EXPECT_EQ(ok.exit_code, 0) << ok.out << ok.err;
  EXPECT_TRUE(contains(ok.out, "ok " + (dir / "step_00000004").string())) << ok.out;

  // Corrupt the first element of rank 0's lm_head shard.
  const fs::path file = dir / "step_00000004" / "rank_00000.h5";
  const float first = expected_value("lm_head.weight", Fill::model, 0);
  const float second = expected_value("lm_head.weight", Fill::model, 1);
  std::string pattern(reinterpret_cast<const char*>(&first), 4);
  pattern.append(reinterpret_cast<const char*>(&second), 4);
  std::string bytes = read_file(file);
  const auto at = bytes.find(pattern);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 2] = static_cast<char>(bytes[at + 2] ^ 0x01);
  write_file(file, bytes);
  const auto bad = run_cli({"ckpt", "verify", dir.path().string()});
  EXPECT_EQ(bad.exit_code, 1) << bad.out << bad.err;
  EXPECT_TRUE(contains(bad.out, "FAULT ")) << bad.out;
  EXPECT_TRUE(contains(bad.out, "rank_00000.h5, tensor lm_head.weight")) << bad.out;
  EXPECT_TRUE(contains(bad.err, "1 fault(s)")) << bad.err;
  const auto json =
      nlohmann::json::parse(run_cli({"ckpt", "verify", dir.path().string(), "--json"}).out);
  EXPECT_FALSE(json["ok"].get<bool>());
  EXPECT_EQ(json["faults"][0]["tensor"], "lm_head.weight");

  const auto not_ckpt = run_cli({"ckpt", "verify", (dir / "nothing").string()});
  EXPECT_EQ(not_ckpt.exit_code, 1);
  EXPECT_TRUE(contains(not_ckpt.out, "does not exist")) << not_ckpt.out;
}

TEST(CkptCli, VerifyAgainstAnotherConfigNamesTheTensor) {
  TempDir dir;
  save_two_ranks(dir.path(), tiny_config(), 1);
  auto json = tiny_config_json();
  json["vocab_size"] = 48;
  write_file(dir / "other.json", json.dump());
  const auto r =
      run_cli({"ckpt", "verify", dir.path().string(), "--model", (dir / "other.json").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.out,
                       "tensor model.embed_tokens.weight: shape [40, 16], the given config "
                       "expects [48, 16]"))
      << r.out;
}

TEST(CkptCli, InspectListsTensorsShapesDtypesBytesLayoutAndStep) {
  TempDir dir;
  save_two_ranks(dir.path(), tiny_config(), 12);
  const auto text = run_cli({"ckpt", "inspect", dir.path().string()});
  EXPECT_EQ(text.exit_code, 0) << text.err;
  EXPECT_TRUE(contains(text.out, "step 12")) << text.out;
  EXPECT_TRUE(contains(text.out, "model.embed_tokens.weight")) << text.out;
  const auto r = run_cli({"ckpt", "inspect", dir.path().string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["step"], 12);
  EXPECT_EQ(json["world_size"], 2);
  EXPECT_EQ(json["layout"], sample_state(12).layout);
  const auto specs = parameter_specs(tiny_config());
  EXPECT_EQ(json["tensors"].size(), 3 * specs.size());  // model, m, v
  const auto& first = json["tensors"][0];
  EXPECT_EQ(first["name"], "model.embed_tokens.weight");
  EXPECT_EQ(first["kind"], "model");
  EXPECT_EQ(first["dtype"], "f32");
  EXPECT_EQ(first["shape"], nlohmann::json({40, 16}));
  EXPECT_EQ(first["bytes"], 40 * 16 * 4);
  EXPECT_EQ(first["blocks"], 2);
  const auto missing = run_cli({"ckpt", "inspect", (dir / "nope").string()});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_TRUE(contains(missing.err, "nope")) << missing.err;
}

TEST(CkptCli, BenchTimesEveryLoadWarmAndCold) {
  TempDir dir;
  const auto r = run_cli({"ckpt", "bench", (dir / "scratch").string(), "--gigabytes", "0.02",
                          "--loads", "3", "--cold-loads", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["tensors"], 1);
  EXPECT_EQ(json["load_s_each"].size(), 3u);
  EXPECT_EQ(json["cold_load_s_each"].size(), 1u);
  EXPECT_GT(json["load_gb_per_s"].get<double>(), 0.0);
  EXPECT_GT(json["cold_load_gb_per_s"].get<double>(), 0.0);
  EXPECT_GT(json["plain_read_gb_per_s"].get<double>(), 0.0);
  EXPECT_EQ(run_cli({"ckpt", "bench", (dir / "scratch").string(), "--loads", "0"}).exit_code, 2);
}

TEST(CheckpointIndex, H5pyReadsWholeTensorsThroughVirtualDatasets) {
  TempDir dir;
  const auto config = tiny_config();
  save_two_ranks(dir / "ckpt", config, 3);
  fs::create_directory(dir / "expected");
  int written = 0;
  for (const auto& spec : parameter_specs(config)) {
    if (written++ % 3 != 0) continue;  // a sample of tensors keeps the test quick
    for (auto [fill, path] : {std::pair{Fill::model, "model__" + spec.name},
                              std::pair{Fill::m, "optim__" + spec.name + "__m"}}) {
      std::ofstream out(dir / "expected" / (path + ".bin"), std::ios::binary);
      for (std::int64_t i = 0; i < shape_numel(spec.shape); ++i) {
        const float v = expected_value(spec.name, fill, i);
        out.write(reinterpret_cast<const char*>(&v), sizeof v);
      }
    }
  }
  const auto r =
      run_shell(python() + " " + script("h5py_read_index.py").string() + " " +
                (dir / "ckpt" / "step_00000003").string() + " " + (dir / "expected").string());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "checked ")) << r.out;
}

std::map<std::string, std::pair<std::string, std::string>> tensor_bytes(const fs::path& dir) {
  std::map<std::string, std::pair<std::string, std::string>> bytes;  // name -> (dtype, bytes)
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    checkpoint::SafetensorsFile file(entry.path());
    for (const auto& t : file.tensors())
      bytes[t.name] = {t.dtype,
                       std::string(reinterpret_cast<const char*>(file.data(t)), t.end - t.begin)};
  }
  return bytes;
}

class SafetensorsRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(SafetensorsRoundTrip, ImportThenExportGivesBackTheSameBytes) {
  TempDir dir;
  const std::string model_type = GetParam();
  const auto made = run_shell(python() + " " + script("make_hf_checkpoint.py").string() + " " +
                              (dir / "hf").string() + " " + model_type);
  ASSERT_EQ(made.exit_code, 0) << made.out;
  const auto imported =
      run_cli({"ckpt", "import", (dir / "hf").string(), "--out", (dir / "ckpt").string()});
  ASSERT_EQ(imported.exit_code, 0) << imported.err;
  EXPECT_TRUE(contains(imported.out, "skipped model.layers.0.self_attn.rotary_emb.inv_freq"))
      << imported.out;
  EXPECT_TRUE(run_cli({"ckpt", "verify", (dir / "ckpt").string()}).exit_code == 0);
  if (model_type == "mixtral") {
    // Stored under canonical names; exported under Mixtral's again (checked below).
    const auto inspected = run_cli({"ckpt", "inspect", (dir / "ckpt").string()});
    EXPECT_TRUE(contains(inspected.out, "model.layers.1.mlp.experts.2.down_proj.weight"))
        << inspected.out;
    EXPECT_FALSE(contains(inspected.out, "block_sparse_moe")) << inspected.out;
  }
  const auto exported = run_cli({"ckpt", "export", (dir / "ckpt").string(), "--format",
                                 "safetensors", "--out", (dir / "out").string()});
  ASSERT_EQ(exported.exit_code, 0) << exported.err;

  auto original = tensor_bytes(dir / "hf");
  const auto round_trip = tensor_bytes(dir / "out");
  for (auto it = original.begin(); it != original.end();)
    it = it->first.ends_with("inv_freq") ? original.erase(it) : std::next(it);
  ASSERT_EQ(original.size(), round_trip.size());
  for (const auto& [name, value] : original) {
    ASSERT_TRUE(round_trip.count(name)) << name;
    EXPECT_EQ(round_trip.at(name).first, value.first) << name;
    EXPECT_TRUE(round_trip.at(name).second == value.second) << name << " bytes differ";
  }
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "out" / "config.json")),
            nlohmann::json::parse(read_file(dir / "hf" / "config.json")));
}

INSTANTIATE_TEST_SUITE_P(Models, SafetensorsRoundTrip,
                         ::testing::Values("llama", "qwen2", "qwen3", "mixtral", "qwen2_moe"));

TEST(SafetensorsImport, MismatchesAreNamedWithFileAndTensor) {
  TempDir dir;
  struct Case {
    std::string flag, tensor, expect;
  };
  for (const Case& c : {Case{"--bad-shape", "model.layers.1.mlp.down_proj.weight",
                             "shape [17, 24], " + (dir / "bad-shape" / "config.json").string() +
                                 " implies [16, 24]"},
                        Case{"--drop", "model.norm.weight", "lacks 1 tensors"},
                        Case{"--extra", "model.layers.0.mystery.weight", "not a parameter"}}) {
    const fs::path hf = dir / c.flag.substr(2);
    const auto made = run_shell(python() + " " + script("make_hf_checkpoint.py").string() + " " +
                                hf.string() + " llama " + c.flag + " " + c.tensor);
    ASSERT_EQ(made.exit_code, 0) << made.out;
    const auto r = run_cli({"ckpt", "import", hf.string(), "--out", (dir / "ckpt").string()});
    EXPECT_EQ(r.exit_code, 2) << c.flag;
    EXPECT_TRUE(contains(r.err, c.tensor)) << r.err;
    EXPECT_TRUE(contains(r.err, c.expect)) << r.err;
    EXPECT_FALSE(fs::exists(dir / "ckpt" / "latest"));
  }
  write_file(dir / "truncated.safetensors", std::string("\x40\0\0\0\0\0\0\0{\"a\"", 12));
  try {
    checkpoint::SafetensorsFile file(dir / "truncated.safetensors");
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), "truncated.safetensors")) << e.what();
  }
}

// Configs whose forward pass metamorph's decoder does not compute are refused, naming the field,
// instead of giving a checkpoint whose logits silently differ from the original model's.
TEST(SafetensorsImport, ArchitecturesItCannotComputeAreRefused) {
  TempDir dir;
  const fs::path hf = dir / "hf";
  const auto made = run_shell(python() + " " + script("make_hf_checkpoint.py").string() + " " +
                              hf.string() + " llama");
  ASSERT_EQ(made.exit_code, 0) << made.out;
  const nlohmann::json original = nlohmann::json::parse(read_file(hf / "config.json"));
  struct Case {
    nlohmann::json change;
    std::string expect;  // empty: imports
  };
  const std::vector<Case> cases = {
      {{{"hidden_act", "gelu"}}, "hidden_act 'gelu' cannot be imported"},
      {{{"mlp_bias", true}}, "mlp_bias true cannot be imported"},
      {{{"rope_parameters", {{"rope_type", "llama3"}, {"rope_theta", 5e5}}}},
       "rope_parameters.rope_type 'llama3' cannot be imported"},
      {{{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}},
       "rope_scaling.rope_type 'linear' cannot be imported"},
      {{{"sliding_window", 1024}}, "sliding-window attention (sliding_window 1024 < "},
      {{{"use_sliding_window", true}, {"sliding_window", 64}}, "sliding-window attention"},
      // A window as long as the positions never limits attention; null fields are absent ones.
      {{{"sliding_window", 4096}, {"max_position_embeddings", 4096}}, ""},
      {{{"sliding_window", nullptr}, {"mlp_bias", nullptr}, {"rope_scaling", nullptr}}, ""},
      // Qwen2/3 configs carry a window they do not use; transformers 5 writes rope_parameters.
      {{{"use_sliding_window", false}, {"sliding_window", 32768}}, ""},
      {{{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 5e5}}},
        {"hidden_act", "silu"}},
       ""},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    nlohmann::json config = original;
    config.update(cases[i].change);
    write_file(hf / "config.json", config.dump());
    const fs::path out = dir / ("ckpt" + std::to_string(i));
    const auto r = run_cli({"ckpt", "import", hf.string(), "--out", out.string()});
    if (cases[i].expect.empty()) {
      EXPECT_EQ(r.exit_code, 0) << r.err;
      continue;
    }
    EXPECT_EQ(r.exit_code, 2) << cases[i].change.dump();
    EXPECT_TRUE(contains(r.err, cases[i].expect)) << r.err;
    EXPECT_TRUE(contains(r.err, (hf / "config.json").string())) << r.err;
    EXPECT_FALSE(fs::exists(out / "latest"));
  }
}

}  // namespace
}  // namespace metamorph::test

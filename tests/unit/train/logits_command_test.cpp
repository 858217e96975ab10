// `metamorph logits`: against an independent float64 PyTorch forward pass that reads the Hugging
// Face files itself (tests/reference/hf_logits_reference.py), against the model's own loss, and
// its answers to bad token files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/core/npy_file.hpp"
#include "runtime/data/data_manifest.hpp"
#include "runtime/data/indexed_dataset.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/data/sample_loader.hpp"
#include "runtime/train/logits_run.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::test {
namespace {

namespace fs = std::filesystem;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// make_hf_checkpoint.py's models have a vocabulary of 40 and 2 layers.
constexpr std::int64_t kVocab = 40;

// A usable HF directory of `model_type` (normal weights in bf16/f16/f32, rope_theta inside
// rope_parameters), imported into dir/ckpt.
void make_imported_model(const TempDir& dir, const std::string& model_type) {
  const auto made = run_shell(
      python() + " " + (source_dir() / "tests/unit/checkpoint/make_hf_checkpoint.py").string() +
      " " + (dir / "hf").string() + " " + model_type + " --normal");
  ASSERT_EQ(made.exit_code, 0) << made.out;
  const auto imported =
      run_cli({"ckpt", "import", (dir / "hf").string(), "--out", (dir / "ckpt").string()});
  ASSERT_EQ(imported.exit_code, 0) << imported.err;
}

// Token rows [batch, seq] with every id of the vocabulary somewhere.
std::vector<std::int32_t> token_rows(std::int64_t batch, std::int64_t seq) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(batch * seq));
  for (std::size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<std::int32_t>((i * 17 + i / 7) % kVocab);
  return ids;
}

std::vector<float> floats_of(const NpyArray& a) {
  EXPECT_EQ(a.descr, "<f4");
  std::vector<float> out(a.data.size() / sizeof(float));
  std::memcpy(out.data(), a.data.data(), a.data.size());
  return out;
}

class LogitsAgainstReference : public ::testing::TestWithParam<std::string> {};

TEST_P(LogitsAgainstReference, MatchesAFloat64ForwardOfTheHuggingFaceFiles) {
  TempDir dir;
  make_imported_model(dir, GetParam());
  const std::int64_t batch = 3, seq = 11;
  const auto ids = token_rows(batch, seq);
  write_npy(dir / "tokens.npy", "<i4", {batch, seq}, ids.data());
  // Two rows per forward pass: the last pass has one row, as a partial micro-batch would.
  const auto r = run_cli({"logits", "--ckpt", (dir / "ckpt").string(), "--tokens",
                          (dir / "tokens.npy").string(), "--out", (dir / "logits.npy").string(),
                          "--micro-batch", "2", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "\"vocab\":40")) << r.out;
  const auto ref = run_shell(python() + " " +
                             (source_dir() / "tests/reference/hf_logits_reference.py").string() +
                             " " + (dir / "hf").string() + " " + (dir / "tokens.npy").string() +
                             " " + (dir / "reference.npy").string());
  ASSERT_EQ(ref.exit_code, 0) << ref.out;

  const NpyArray ours = read_npy(dir / "logits.npy"), theirs = read_npy(dir / "reference.npy");
  ASSERT_EQ(ours.shape, (Shape{batch, seq, kVocab}));
  ASSERT_EQ(theirs.shape, ours.shape);
  const auto a = floats_of(ours), b = floats_of(theirs);
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  // fp32 against float64 on weights both read exactly: rounding only.
  EXPECT_GT(scale, 0.5);
  EXPECT_LE(diff / scale, 1e-5) << "max |diff| " << diff << ", max |logit| " << scale;
}

INSTANTIATE_TEST_SUITE_P(Models, LogitsAgainstReference,
                         ::testing::Values("llama", "qwen3", "mixtral", "qwen2"));

TEST(LogitsCommand, CrossEntropyOfTheLogitsIsTheModelsLoss) {
  TempDir dir;
  make_imported_model(dir, "llama");
  const std::int64_t batch = 2, seq = 9;
  const auto ids = token_rows(batch, seq + 1);
  // The inputs as raw int32 rows of seq tokens; the targets are the next tokens.
  std::vector<std::int32_t> inputs, targets;
  for (std::int64_t r = 0; r < batch; ++r)
    for (std::int64_t i = 0; i < seq; ++i) {
      inputs.push_back(ids[static_cast<std::size_t>(r * (seq + 1) + i)]);
      targets.push_back(ids[static_cast<std::size_t>(r * (seq + 1) + i + 1)]);
    }
  write_file(dir / "tokens.bin", std::string(reinterpret_cast<const char*>(inputs.data()),
                                             inputs.size() * sizeof(std::int32_t)));
  LogitsOptions o;
  o.checkpoint = (dir / "ckpt").string();
  o.tokens = (dir / "tokens.bin").string();
  o.seq = seq;
  o.out = (dir / "logits.npy").string();
  const LogitsResult result = write_logits(o);
  EXPECT_EQ(result.batch, batch);
  EXPECT_EQ(result.seq, seq);
  const auto logits = floats_of(read_npy(dir / "logits.npy"));

  double ce = 0;
  for (std::size_t t = 0; t < targets.size(); ++t) {
    const float* row = logits.data() + t * kVocab;
    double max = row[0], sum = 0;
    for (std::int64_t v = 0; v < kVocab; ++v) max = std::max(max, static_cast<double>(row[v]));
    for (std::int64_t v = 0; v < kVocab; ++v) sum += std::exp(row[v] - max);
    ce += max + std::log(sum) - row[targets[t]];
  }

  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = model_config_from_json(
      checkpoint::read_index_file(resolve_checkpoint(dir / "ckpt")).state.config);
  ParameterSet params = make_parameters(cpu, config);
  LoadOptions load;
  load.with_optimizer = false;
  load_checkpoint(dir / "ckpt", params, load);
  Transformer model(cpu, config, params);
  Tensor in = cpu.empty({batch, seq}, DType::i32), tg = cpu.empty({batch, seq}, DType::i32);
  std::copy(inputs.begin(), inputs.end(), in.data<std::int32_t>());
  std::copy(targets.begin(), targets.end(), tg.data<std::int32_t>());
  const LossSum loss = model.loss(in, tg);
  ASSERT_EQ(loss.tokens, batch * seq);
  EXPECT_NEAR(ce / (batch * seq), loss.sum / static_cast<double>(loss.tokens), 1e-5);
  EXPECT_GT(loss.sum / static_cast<double>(loss.tokens), 0.5);  // not a degenerate model
}

// End to end through the CLI: `metamorph eval` on a dataset, and `metamorph logits` on the same
// validation samples (read here with the loader options eval uses), give the same loss.
TEST(LogitsCommand, CrossEntropyOfTheLogitsIsEvalsLoss) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += "sample " + std::to_string(i * 7919 % 1000) + (i % 9 == 8 ? ".\n\n" : " and ");
  write_file(dir / "corpus.txt", text);
  data::PrepareOptions prepare;
  prepare.input = (dir / "corpus.txt").string();
  prepare.tokenizer = "byte";
  prepare.output_prefix = (dir / "data").string();
  prepare.validation_fraction = 0.3;
  data::prepare_dataset(prepare);
  const nlohmann::json model = {{"vocab_size", 258},
                                {"hidden_size", 32},
                                {"intermediate_size", 48},
                                {"num_hidden_layers", 2},
                                {"num_attention_heads", 4},
                                {"num_key_value_heads", 2},
                                {"max_position_embeddings", 64},
                                {"initializer_range", 0.3}};
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = model_config_from_json(model);
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 5);
  CheckpointState state;
  state.config = model;
  save_checkpoint(dir / "ckpt", params, state);

  const std::int64_t seq = 24, batches = 2, micro_batch = 3, rows = batches * micro_batch;
  const auto eval =
      run_cli({"eval", "--ckpt", (dir / "ckpt").string(), "--data", (dir / "data").string(),
               "--seq", std::to_string(seq), "--micro-batch", std::to_string(micro_batch),
               "--batches", std::to_string(batches), "--json"});
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  const nlohmann::json reported = nlohmann::json::parse(eval.out);
  ASSERT_EQ(reported["tokens"].get<std::int64_t>(), rows * seq) << eval.out;

  const data::IndexedDataset dataset((dir / "data").string());
  data::LoaderOptions options;
  options.seq = seq;
  options.shuffle = false;
  options.split = data::Split::kValidation;
  options.validation_fraction = data::recorded_validation_fraction((dir / "data").string());
  ASSERT_GT(*options.validation_fraction, 0.0);
  const data::SampleLoader loader(dataset, options);
  std::vector<std::int32_t> inputs, targets, row(static_cast<std::size_t>(seq + 1));
  for (std::int64_t r = 0; r < rows; ++r) {
    loader.sample(r, row.data());
    inputs.insert(inputs.end(), row.begin(), row.end() - 1);
    targets.insert(targets.end(), row.begin() + 1, row.end());
  }
  write_npy(dir / "tokens.npy", "<i4", {rows, seq}, inputs.data());
  const auto r = run_cli({"logits", "--ckpt", (dir / "ckpt").string(), "--tokens",
                          (dir / "tokens.npy").string(), "--out", (dir / "logits.npy").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto logits = floats_of(read_npy(dir / "logits.npy"));
  const std::int64_t v = config.vocab_size;
  double ce = 0;
  for (std::size_t t = 0; t < targets.size(); ++t) {
    const float* p = logits.data() + t * static_cast<std::size_t>(v);
    double max = p[0], sum = 0;
    for (std::int64_t i = 0; i < v; ++i) max = std::max(max, static_cast<double>(p[i]));
    for (std::int64_t i = 0; i < v; ++i) sum += std::exp(p[i] - max);
    ce += max + std::log(sum) - p[targets[t]];
  }
  ce /= static_cast<double>(targets.size());
  EXPECT_GT(ce, 1.0);
  EXPECT_NEAR(ce, reported["loss"].get<double>(), 1e-5 * ce);
}

TEST(LogitsCommand, BadTokenFilesAreInputErrorsNamingTheProblem) {
  TempDir dir;
  make_imported_model(dir, "llama");
  const std::vector<std::int32_t> ok = {1, 2, 3, 4, 5, 6};
  const std::vector<std::int32_t> too_big = {1, 2, static_cast<std::int32_t>(kVocab), 4};
  const std::vector<std::int64_t> negative = {3, -1};
  const std::vector<float> floats = {1.0f, 2.0f};
  write_npy(dir / "too_big.npy", "<i4", {2, 2}, too_big.data());
  write_npy(dir / "negative.npy", "<i8", {2}, negative.data());
  write_npy(dir / "floats.npy", "<f4", {2}, floats.data());
  write_npy(dir / "cube.npy", "<i4", {1, 2, 3}, ok.data());
  write_file(dir / "odd.bin", std::string(7, '\0'));
  write_file(dir / "ok.bin",
             std::string(reinterpret_cast<const char*>(ok.data()), ok.size() * sizeof(ok[0])));
  write_file(dir / "not.npy", "plain text");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{"--tokens", (dir / "too_big.npy").string()},
       "token [1, 0] is 40, outside the model's vocabulary [0, 40)"},
      {{"--tokens", (dir / "negative.npy").string()}, "token 1 is -1, not a token id"},
      {{"--tokens", (dir / "floats.npy").string()}, "token ids must be integers, the array is <f4"},
      {{"--tokens", (dir / "cube.npy").string()},
       "shape [1, 2, 3]; expected [seq] or [batch, seq]"},
      {{"--tokens", (dir / "odd.bin").string()}, "7 bytes is not a whole number of int32"},
      {{"--tokens", (dir / "ok.bin").string(), "--seq", "4"},
       "6 token ids do not split into rows of --seq 4"},
      {{"--tokens", (dir / "not.npy").string()}, "not a .npy file"},
      {{"--tokens", (dir / "missing.npy").string()}, "missing.npy: no such file"},
      {{"--tokens", (dir / "ok.bin").string(), "--device", "tpu"},
       "--device 'tpu'; valid: cpu, cuda"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"logits", "--ckpt", (dir / "ckpt").string(), "--out",
                                     (dir / "out.npy").string()};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << c.expect;
    EXPECT_TRUE(contains(r.err, c.expect)) << r.err;
    EXPECT_FALSE(fs::exists(dir / "out.npy")) << c.expect;
  }
  // Rows longer than the model's positions (make_hf_checkpoint.py leaves the default 2048).
  std::vector<std::int32_t> long_row(2049, 1);
  write_npy(dir / "long.npy", "<i4", {2049}, long_row.data());
  const auto r = run_cli({"logits", "--ckpt", (dir / "ckpt").string(), "--tokens",
                          (dir / "long.npy").string(), "--out", (dir / "out.npy").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(
      contains(r.err, "rows of 2049 tokens exceed the model's max_position_embeddings 2048"))
      << r.err;
}

TEST(NpyFile, RoundTripsAndReadsWhatNumpyWrites) {
  TempDir dir;
  const std::vector<std::int32_t> values = {1, -2, 3, 4, 5, 6};
  write_npy(dir / "a.npy", "<i4", {2, 3}, values.data());
  const NpyArray a = read_npy(dir / "a.npy");
  EXPECT_EQ(a.descr, "<i4");
  EXPECT_EQ(a.shape, (Shape{2, 3}));
  EXPECT_EQ(std::memcmp(a.data.data(), values.data(), a.data.size()), 0);
  // numpy's own files, 1-D int64 and uint16, read back as token rows.
  const auto made =
      run_shell(python() + " -c \"import numpy as np; np.save('" + (dir / "b.npy").string() +
                "', np.arange(5, dtype=np.int64)); np.save('" + (dir / "c.npy").string() +
                "', np.array([[7, 8], [9, 10]], dtype=np.uint16)); "
                "assert (np.load('" +
                (dir / "a.npy").string() + "') == [[1, -2, 3], [4, 5, 6]]).all()\"");
  ASSERT_EQ(made.exit_code, 0) << made.out;
  const TokenRows b = read_token_rows(dir / "b.npy");
  EXPECT_EQ(b.batch, 1);
  EXPECT_EQ(b.ids, (std::vector<std::int32_t>{0, 1, 2, 3, 4}));
  const TokenRows c = read_token_rows(dir / "c.npy");
  EXPECT_EQ(c.batch, 2);
  EXPECT_EQ(c.seq, 2);
  EXPECT_EQ(c.ids, (std::vector<std::int32_t>{7, 8, 9, 10}));
}

}  // namespace
}  // namespace metamorph::test

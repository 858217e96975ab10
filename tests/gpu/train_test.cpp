// `train --device cuda` against the CPU reference: the same model, init and data for 50 steps
// on both, loss curves compared within a bf16 tolerance; checkpoints written by one device and
// read by the other. Each test skips when no GPU is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "models/init.hpp"
#include "models/parameter_transfer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/backends/cuda/cuda_device.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/decode/ar_decoder.hpp"
#include "runtime/decode/diffusion_decoder.hpp"
#include "runtime/decode/generate_run.hpp"
#include "runtime/train/compute_device.hpp"
#include "runtime/train/evaluate.hpp"
#include "runtime/train/training_run.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

// bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%) in every weight and activation,
// and the logits feeding the loss are bf16 too; over two layers and 50 AdamW steps these
// roundings move the loss by a few tenths of a percent to about a percent (the usual gap
// between bf16 and fp32 runs of a small model). 3% per step is well above that and far below
// what a wrong gradient or a missing update gives (the loss drops by ~2.5 nats over the run,
// a broken path stalls or diverges).
constexpr double kStepTolerance = 0.03;
// Averaged over the last 10 steps the curves must agree more tightly.
constexpr double kTailTolerance = 0.015;

class GpuTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " << cuda::describe_device(0);
    // Documents of random words from a fixed 300-word list: the loss falls from ln 258 to about
    // 3 nats and levels there (a repetitive corpus would be memorised down to ~0.2, where a
    // relative tolerance means little).
    std::mt19937 rng(1);
    std::vector<std::string> words(300);
    for (auto& w : words)
      for (std::uint32_t i = 0, n = 2 + rng() % 7; i < n; ++i)
        w += static_cast<char>('a' + rng() % 26);
    std::string text;
    for (int d = 0; d < 400; ++d)
      for (int i = 0; i < 60; ++i) text += words[rng() % words.size()] + (i < 59 ? " " : ".\n\n");
    test::write_file(dir_ / "corpus.txt", text);
    data::PrepareOptions p;
    p.input = (dir_ / "corpus.txt").string();
    p.tokenizer = "byte";
    p.output_prefix = (dir_ / "data").string();
    p.validation_fraction = 0.05;
    data::prepare_dataset(p);
    // head_dim 64: the tensor-core attention path of the CUDA backend.
    test::write_file(dir_ / "model.json", R"({"vocab_size": 258, "hidden_size": 256,
      "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 128})");
  }

  RunOptions options(Device device, std::int64_t steps) const {
    RunOptions o;
    o.model_path = (dir_ / "model.json").string();
    o.data_prefix = (dir_ / "data").string();
    o.steps = steps;
    o.seq = 64;
    o.micro_batch = 4;
    o.global_batch = 8;
    o.lr = 2e-3;
    o.warmup = std::min<std::int64_t>(5, steps - 1);  // --warmup must stay below --steps
    o.device = device;
    return o;
  }

  std::vector<double> losses(const RunOptions& o) const {
    std::vector<double> out;
    run_training(o, quiet_, [&](const StepMetrics& m) { out.push_back(m.loss); });
    return out;
  }

  test::TempDir dir_;
  const Logger quiet_{LogOptions{.rank = 1}};
};

// The GPU curve within the per-step and tail tolerances of the CPU's, and learning: the loss
// falls by at least min_drop over the run.
void expect_curves_agree(const std::vector<double>& cpu, const std::vector<double>& gpu,
                         const std::string& what, double min_drop = 1.0) {
  ASSERT_EQ(cpu.size(), 50u) << what;
  ASSERT_EQ(gpu.size(), 50u) << what;
  double tail_cpu = 0, tail_gpu = 0;
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    ASSERT_TRUE(std::isfinite(gpu[i])) << what << " step " << i + 1;
    EXPECT_LE(std::abs(gpu[i] - cpu[i]), kStepTolerance * cpu[i])
        << what << " step " << i + 1 << ": gpu " << gpu[i] << " cpu " << cpu[i];
    if (i >= cpu.size() - 10) {
      tail_cpu += cpu[i];
      tail_gpu += gpu[i];
    }
  }
  EXPECT_LE(std::abs(tail_gpu - tail_cpu), kTailTolerance * tail_cpu)
      << what << " last 10 steps: gpu " << tail_gpu / 10 << " cpu " << tail_cpu / 10;
  // It learns: the loss falls well below its start (ln 258 = 5.55 for a fresh model).
  EXPECT_LT(gpu.back(), gpu.front() - min_drop)
      << what << " first " << gpu.front() << " last " << gpu.back();
  std::printf("%s loss step 1 / 10 / 50: cpu %.4f %.4f %.4f  gpu %.4f %.4f %.4f\n", what.c_str(),
              cpu[0], cpu[9], cpu[49], gpu[0], gpu[9], gpu[49]);
}

TEST_F(GpuTraining, LossCurveFollowsTheCpuWithinBf16Tolerance) {
  expect_curves_agree(losses(options(Device::cpu, 50)), losses(options(Device::cuda, 50)), "dense");
}

// MoE models on one GPU against the CPU from the same init. The same tolerances as the dense
// model: bf16 logits can flip a router's choice where two experts' scores are within a rounding
// of each other, which sends that token through another (equally trained) expert; such tokens
// are few, and the loss is a mean over all of them, so the curves stay as close as the dense
// ones. A wrong permutation, gate or router gradient breaks learning by far more.
TEST_F(GpuTraining, MoeLossCurvesFollowTheCpuWithinBf16Tolerance) {
  const std::vector<std::pair<std::string, std::string>> models = {
      // Mixtral-style: 8 experts, top-2 of a softmax, renormalised.
      {"softmax top-2 of 8", R"("num_experts": 8, "num_experts_per_tok": 2,
        "moe_intermediate_size": 128, "norm_topk_prob": true)"},
      // Qwen2-MoE-style: top-3 of 6, not renormalised, a gated shared expert, z-loss.
      {"top-3 of 6 + gated shared expert", R"("model_type": "qwen2_moe", "num_experts": 6,
        "num_experts_per_tok": 3, "moe_intermediate_size": 96,
        "shared_expert_intermediate_size": 128, "router_z_loss_coef": 0.001)"},
      // DeepSeek-V3-style: sigmoid scores with the balancing bias, one shared expert.
      {"sigmoid + bias top-2 of 8", R"("num_experts": 8, "num_experts_per_tok": 2,
        "moe_intermediate_size": 64, "scoring_func": "sigmoid", "n_shared_experts": 1)"},
  };
  for (const auto& [what, moe] : models) {
    test::write_file(dir_ / "moe.json", R"({"vocab_size": 258, "hidden_size": 256,
      "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 128, )" +
                                            moe + "}");
    RunOptions cpu = options(Device::cpu, 50), gpu = options(Device::cuda, 50);
    cpu.model_path = gpu.model_path = (dir_ / "moe.json").string();
    const std::vector<double> gpu_losses = losses(gpu);
    expect_curves_agree(losses(cpu), gpu_losses, what);
    // No atomics in routing, permutation or combine: a second GPU run repeats the first's bits.
    if (&what == &models.front().first) {
      EXPECT_EQ(losses(gpu), gpu_losses) << what;
    }
  }
}

// The benchmark mode's forced balanced routing (--moe-force-balance) on the GPU against the CPU:
// the choice no longer depends on the logits, so no bf16 rounding can flip it; the gates, the
// router's gradient, the experts and the losses still follow the CPU's.
TEST_F(GpuTraining, MoeForcedBalanceLossCurveFollowsTheCpu) {
  test::write_file(dir_ / "moe.json", R"({"vocab_size": 258, "hidden_size": 256,
    "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 128, "num_experts": 8,
    "num_experts_per_tok": 2, "moe_intermediate_size": 128, "norm_topk_prob": true,
    "router_z_loss_coef": 0.001})");
  RunOptions cpu = options(Device::cpu, 50), gpu = options(Device::cuda, 50);
  cpu.model_path = gpu.model_path = (dir_ / "moe.json").string();
  cpu.moe_force_balance = gpu.moe_force_balance = true;
  std::vector<double> gpu_losses;
  run_training(gpu, quiet_, [&](const StepMetrics& m) {
    gpu_losses.push_back(m.loss);
    for (const MoeLayerMetrics& l : m.moe)
      EXPECT_EQ(l.tokens_min, l.tokens_max) << "layer " << l.layer << " step " << m.step;
  });
  expect_curves_agree(losses(cpu), gpu_losses, "forced balanced top-2 of 8");
}

TEST_F(GpuTraining, SameInitOnBothDevices) {
  // Step 1's loss is the untrained model's: only bf16 rounding separates the devices.
  const std::vector<double> cpu = losses(options(Device::cpu, 1));
  const std::vector<double> gpu = losses(options(Device::cuda, 1));
  EXPECT_NEAR(gpu[0], cpu[0], 0.01 * cpu[0]);
}

// A host checkpoint's fp32 masters and moments survive the trip through the GPU unchanged.
TEST_F(GpuTraining, CheckpointMastersRoundTripThroughTheGpu) {
  RunOptions o = options(Device::cpu, 5);
  o.save_dir = (dir_ / "cpu").string();
  run_training(o, quiet_);
  const ModelConfig config = load_model_config((dir_ / "model.json").string());
  Arena host_arena;
  CpuBackend cpu(host_arena);
  ParameterSet host = make_parameters(cpu, config);
  for (auto& p : host.all()) {
    p.adam_m = cpu.zeros(p.value.shape());
    p.adam_v = cpu.zeros(p.value.shape());
  }
  load_checkpoint(dir_ / "cpu", host);

  ComputeDevice gpu = make_compute_device(Device::cuda);
  ParameterSet device = make_parameters(*gpu.backend, config);
  for (auto& p : device.all()) {
    ASSERT_EQ(p.value.dtype(), DType::bf16) << p.name;
    ASSERT_TRUE(p.master.defined()) << p.name;
    p.adam_m = gpu.backend->zeros(p.value.shape());
    p.adam_v = gpu.backend->zeros(p.value.shape());
  }
  upload_parameters(*gpu.backend, host, device, true);
  const ParameterSet back = host_parameters(*gpu.backend, device, true);
  for (const auto& p : host.all()) {
    const Parameter* q = back.find(p.name);
    ASSERT_NE(q, nullptr);
    for (auto [a, b] : {std::pair{&p.value, &q->value}, std::pair{&p.adam_m, &q->adam_m},
                        std::pair{&p.adam_v, &q->adam_v}})
      EXPECT_EQ(std::memcmp(a->raw(), b->raw(), a->bytes()), 0) << p.name;
  }
}

// A checkpoint saved by a GPU run resumes on the CPU and the other way round; each resumed run
// continues the loss curve of an uninterrupted run on the other device within the tolerance.
TEST_F(GpuTraining, CheckpointsMoveBetweenDevices) {
  const std::vector<double> straight = losses(options(Device::cpu, 20));
  for (const Device first : {Device::cuda, Device::cpu}) {
    const Device second = first == Device::cuda ? Device::cpu : Device::cuda;
    const std::string save = std::string("ckpt_") + (first == Device::cuda ? "gpu" : "cpu");
    // Saves at steps 10 and 20; dropping step 20 leaves what a job stopped after step 10 leaves
    // (same --steps, so the same LR schedule).
    RunOptions a = options(first, 20);
    a.save_dir = (dir_ / save).string();
    a.save_every = 10;
    run_training(a, quiet_);
    std::filesystem::remove_all(dir_ / save / "step_00000020");
    test::write_file(dir_ / save / "latest", "step_00000010\n");
    RunOptions b = options(second, 20);
    b.resume_path = a.save_dir;
    b.model_path.clear();
    const std::vector<double> resumed = losses(b);
    ASSERT_EQ(resumed.size(), 10u);
    for (std::size_t i = 0; i < resumed.size(); ++i)
      EXPECT_LE(std::abs(resumed[i] - straight[10 + i]), kStepTolerance * straight[10 + i])
          << save << " resumed step " << 11 + i;
  }
}

// Block diffusion on both devices from the same init, data and masks: the noise and masks are
// drawn on the host from the same keys, so only bf16 rounding separates the curves. A fresh model
// (its [MASK] row grown on the host and uploaded), position-dependent masks, a partial last
// block (seq 64, B = 12) and an AR term of weight 0.5 (a second, causal pass per micro-batch).
// The loss moves by up to 1 nat between neighbouring steps (each step draws new noise levels;
// 4.3 to 5.7 over the last steps of a CPU run) but falls from about 8 (1.5 ln 259) to about 4.5;
// the devices see the same draws, so their curves must agree step by step all the same.
TEST_F(GpuTraining, DiffusionLossCurveFollowsTheCpuWithinBf16Tolerance) {
  auto diffusion = [&](Device device) {
    RunOptions o = options(device, 50);
    o.objective = "diffusion";
    o.diffusion.block_size = 12;
    o.diffusion.masking.schedule = diffusion::MaskSchedule::position_dependent;
    o.diffusion.ar_weight = 0.5;
    std::vector<double> out;
    std::optional<double> val;
    run_training(o, quiet_, [&](const StepMetrics& m) {
      out.push_back(m.loss);
      if (m.val_loss) val = m.val_loss;
    });
    return std::pair{out, val};
  };
  const auto [cpu, cpu_val] = diffusion(Device::cpu);
  const auto [gpu, gpu_val] = diffusion(Device::cuda);
  expect_curves_agree(cpu, gpu, "diffusion", 1.5);
  // The last step's validation NLL bound: the same validation masks on both devices.
  ASSERT_TRUE(cpu_val && gpu_val);
  EXPECT_LE(std::abs(*gpu_val - *cpu_val), kStepTolerance * *cpu_val)
      << "validation: gpu " << *gpu_val << " cpu " << *cpu_val;
}

// `train --init AR_CKPT --objective diffusion` on the GPU (the AR checkpoint read whole on the
// host, grown by [MASK], uploaded) follows the CPU run from the same checkpoint; then decoding
// from the GPU run's checkpoint: the logits of every position of the first block
// (block-diffusion mode, the KV cache prefilled with the prompt's whole blocks) and of the first
// AR step agree with the CPU's within bf16 rounding, `metamorph eval` scores it alike on both
// devices, and `metamorph generate`'s own path
// (run_generate) decodes on the GPU in both modes, never emitting [MASK].
TEST_F(GpuTraining, DiffusionFromAnArCheckpointAndDecodingFollowTheCpu) {
  RunOptions ar = options(Device::cpu, 10);
  ar.save_dir = (dir_ / "ar").string();
  run_training(ar, quiet_);
  std::vector<double> curves[2];
  for (const Device device : {Device::cpu, Device::cuda}) {
    RunOptions o = options(device, 10);
    o.model_path.clear();
    o.init_path = ar.save_dir;
    o.objective = "diffusion";
    o.diffusion.block_size = 8;
    if (device == Device::cuda) o.save_dir = (dir_ / "dlm").string();
    curves[device == Device::cuda] = losses(o);
  }
  ASSERT_EQ(curves[0].size(), 10u);
  ASSERT_EQ(curves[1].size(), 10u);
  EXPECT_NEAR(curves[1][0], curves[0][0], 0.01 * curves[0][0]) << "step 1: the same start";
  for (std::size_t i = 0; i < 10; ++i)
    EXPECT_LE(std::abs(curves[1][i] - curves[0][i]), kStepTolerance * curves[0][i])
        << "step " << i + 1 << ": gpu " << curves[1][i] << " cpu " << curves[0][i];

  // `metamorph eval` of the diffusion checkpoint (its NLL bound, the validation masks of its
  // training run) on both devices.
  EvalResult bound[2];
  for (const Device device : {Device::cpu, Device::cuda}) {
    EvalOptions e;
    e.checkpoint = (dir_ / "dlm").string();
    e.data_prefix = (dir_ / "data").string();
    e.seq = 64;
    e.micro_batch = 4;
    e.batches = 4;
    e.device = device;
    bound[device == Device::cuda] = evaluate_checkpoint(e);
  }
  EXPECT_EQ(bound[1].tokens, bound[0].tokens);
  EXPECT_LE(std::abs(bound[1].loss - bound[0].loss), kStepTolerance * bound[0].loss)
      << "eval: gpu " << bound[1].loss << " cpu " << bound[0].loss;

  const auto dir = resolve_checkpoint(dir_ / "dlm");
  const CheckpointState state = checkpoint::read_index_file(dir).state;
  EXPECT_EQ(state.extra.value("objective", std::string()), "diffusion");
  const ModelConfig config = model_config_from_json(state.config);
  const auto mask_token = state.extra.value("mask_token", -1);
  ASSERT_EQ(mask_token, 258);  // the AR vocabulary's size: [MASK] is the grown row
  ASSERT_EQ(config.vocab_size, 259);
  const std::vector<std::int32_t> prompt = {72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100};

  // The first decoding step's logits on one device, each mode.
  auto first_step = [&](Device device, bool diffusion_mode) {
    ComputeDevice d = make_compute_device(device);
    ParameterSet params = make_parameters(*d.backend, config);
    ParameterSet host = host_parameters(*d.backend, params, false);
    LoadOptions load;
    load.with_optimizer = false;
    load_checkpoint(dir, host, load);
    upload_parameters(*d.backend, host, params, false);
    Transformer model(*d.backend, config, params);
    std::vector<float> first;
    const decode::StepObserver keep_first = [&](std::int64_t, const Tensor& logits) {
      if (first.empty()) first.assign(logits.data<float>(), logits.data<float>() + logits.numel());
    };
    decode::Generation g;
    if (diffusion_mode) {
      decode::DiffusionDecodeOptions options;
      options.block_size = 8;
      options.mask_token = mask_token;
      g = decode::generate_diffusion(model, prompt, 16, options, keep_first);
    } else {
      decode::ArDecodeOptions options;
      options.excluded_token = mask_token;
      g = decode::generate_ar(model, prompt, 4, options, keep_first);
    }
    EXPECT_EQ(g.tokens.size(), diffusion_mode ? 16u : 4u);
    return first;
  };
  for (bool diffusion_mode : {true, false}) {
    const std::vector<float> cpu = first_step(Device::cpu, diffusion_mode);
    const std::vector<float> gpu = first_step(Device::cuda, diffusion_mode);
    ASSERT_EQ(cpu.size(), gpu.size());
    // The block [8, 16): one row per position (its first from the prefill's last row, the
    // shift's predictor), or the one AR row; each over the whole vocabulary.
    ASSERT_EQ(cpu.size(), static_cast<std::size_t>(diffusion_mode ? 8 : 1) *
                              static_cast<std::size_t>(config.vocab_size));
    double diff = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < cpu.size(); ++i) {
      diff += (gpu[i] - cpu[i]) * static_cast<double>(gpu[i] - cpu[i]);
      norm += cpu[i] * static_cast<double>(cpu[i]);
    }
    // bf16 weights and activations through two layers: about 1% of the logits' norm.
    EXPECT_LT(std::sqrt(diff / norm), 0.05) << (diffusion_mode ? "diffusion" : "ar");
  }

  for (const char* mode_name : {"diffusion", "ar"}) {
    const std::string mode = mode_name;
    decode::GenerateRunOptions g;
    g.ckpt = (dir_ / "dlm").string();
    g.prompt = "Hello world";
    g.max_tokens = 24;
    g.mode = mode;
    g.threshold = 0.3;
    g.device = Device::cuda;
    const decode::GenerateRunResult r = decode::run_generate(g);
    EXPECT_EQ(r.generation.tokens.size(), 24u) << mode;
    for (std::int32_t id : r.generation.tokens) EXPECT_NE(id, mask_token) << mode;
    EXPECT_GE(r.generation.forward_passes, mode == "ar" ? 24 : 3) << mode;
    std::printf("generate --device cuda --mode %s: %zu tokens, %lld passes, %.1f tokens/s\n",
                mode.c_str(), r.generation.tokens.size(),
                static_cast<long long>(r.generation.forward_passes), r.generation.tokens_per_s());
  }
}

// Several GPUs need mpirun (tests/gpu/run_layouts_on_gpus.sh runs them): without it a layout
// of two ranks is an input error, as on CPUs.
TEST_F(GpuTraining, RefusesALayoutWithoutItsRanks) {
  RunOptions o = options(Device::cuda, 2);
  o.tp = 2;
  EXPECT_THROW(run_training(o, quiet_), InputError);
}

}  // namespace
}  // namespace metamorph

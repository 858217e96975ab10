#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "models/init.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"
#include "runtime/train/trainer.hpp"

namespace metamorph {
namespace {

// The same rows every step: what an overfitting test wants.
class FixedRows final : public BatchSource {
 public:
  FixedRows(std::int64_t seq, std::int64_t vocab, std::uint64_t seed)
      : seq_(seq), vocab_(vocab), seed_(seed) {}
  void next(std::int64_t rows, std::int32_t* out) override {
    const rng::Stream s(seed_, "fixed.rows");
    for (std::int64_t i = 0; i < rows * (seq_ + 1); ++i)
      out[i] = static_cast<std::int32_t>(s.bits(static_cast<std::uint64_t>(i))[0] %
                                         static_cast<std::uint32_t>(vocab_));
    ++served_;
  }
  std::int64_t seq() const override { return seq_; }
  nlohmann::json position() const override { return served_; }
  void restore(const nlohmann::json& p) override { served_ = p.get<std::int64_t>(); }

 private:
  std::int64_t seq_, vocab_;
  std::uint64_t seed_;
  std::int64_t served_ = 0;
};

ModelConfig tiny_config() {
  return model_config_from_json({{"vocab_size", 32},
                                 {"hidden_size", 32},
                                 {"intermediate_size", 64},
                                 {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4},
                                 {"num_key_value_heads", 2},
                                 {"max_position_embeddings", 64}});
}

TEST(Trainer, OverfitsOneFixedBatch) {
  Arena arena;
  CpuBackend cpu(arena);
  const ModelConfig config = tiny_config();
  ParameterSet params = make_parameters(cpu, config);
  init_parameters(params, config, 1);
  Transformer model(cpu, config, params);
  AdamWOptions adam;
  adam.weight_decay = 0.0;
  AdamW optimizer(cpu, params, adam);
  TrainOptions options;
  options.steps = 150;
  options.micro_batch = 2;
  options.global_batch = 4;
  options.lr = LrSchedule{1e-2, 1e-3, 10, 150};
  FixedRows data(16, config.vocab_size, 9);
  Trainer trainer(cpu, model, optimizer, options, data, nullptr);
  double first = 0, last = 0;
  for (int s = 0; s < options.steps; ++s) {
    const StepMetrics m = trainer.step();
    if (s == 0) first = m.loss;
    last = m.loss;
  }
  EXPECT_GT(first, 3.0);  // ~ln(32) at init
  EXPECT_LT(last, 0.1);
}

TEST(Trainer, GradientAccumulationEqualsOneLargeMicroBatch) {
  const ModelConfig config = tiny_config();
  std::vector<std::vector<float>> grads(2);
  for (int variant = 0; variant < 2; ++variant) {
    Arena arena;
    CpuBackend cpu(arena);
    ParameterSet params = make_parameters(cpu, config);
    init_parameters(params, config, 1);
    Transformer model(cpu, config, params);
    AdamW optimizer(cpu, params, AdamWOptions{});
    TrainOptions options;
    options.micro_batch = variant == 0 ? 1 : 4;
    options.global_batch = 4;
    FixedRows data(8, config.vocab_size, 3);
    Trainer trainer(cpu, model, optimizer, options, data, nullptr);
    trainer.step();
    // After the step the grads still hold this step's (clipped) gradient.
    for (const auto& p : params.all())
      grads[static_cast<std::size_t>(variant)].insert(
          grads[static_cast<std::size_t>(variant)].end(), p.grad.data<float>(),
          p.grad.data<float>() + p.grad.numel());
  }
  ASSERT_EQ(grads[0].size(), grads[1].size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < grads[0].size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(grads[0][i] - grads[1][i])));
    scale = std::max(scale, static_cast<double>(std::abs(grads[1][i])));
  }
  EXPECT_LT(diff / scale, 1e-5);
}

TEST(Trainer, NonFiniteLossStopsNamingTheStepOrIsSkipped) {
  for (auto policy : {NonFinitePolicy::stop, NonFinitePolicy::skip}) {
    Arena arena;
    CpuBackend cpu(arena);
    const ModelConfig config = tiny_config();
    ParameterSet params = make_parameters(cpu, config);
    init_parameters(params, config, 1);
    Transformer model(cpu, config, params);
    AdamW optimizer(cpu, params, AdamWOptions{});
    TrainOptions options;
    options.steps = 3;
    options.micro_batch = 1;
    options.global_batch = 1;
    options.on_nonfinite = policy;
    FixedRows data(8, config.vocab_size, 3);
    Trainer trainer(cpu, model, optimizer, options, data, nullptr);
    trainer.step();
    params.find("model.norm.weight")->value.data<float>()[0] =
        std::numeric_limits<float>::quiet_NaN();
    if (policy == NonFinitePolicy::stop) {
      try {
        trainer.step();
        FAIL() << "expected CheckFailed";
      } catch (const CheckFailed& e) {
        EXPECT_NE(std::string(e.what()).find("step 2: non-finite loss"), std::string::npos)
            << e.what();
      }
    } else {
      const StepMetrics m = trainer.step();
      EXPECT_TRUE(m.skipped);
      EXPECT_EQ(optimizer.steps_taken(), 1);
    }
  }
}

}  // namespace
}  // namespace metamorph

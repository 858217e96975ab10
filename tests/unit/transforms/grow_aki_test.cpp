// AKI and noise: symmetry breaking that keeps the grown model close to the trained source.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/transforms/grow.hpp"
#include "tests/unit/transforms/grow_test_models.hpp"

namespace metamorph {
namespace {

class TrainedSource : public ::testing::Test {
 protected:
  static ModelConfig config(const test::Shape4& shape) {
    return test::grow_config(shape, false, true, false, 31, 0.02);
  }

  void SetUp() override {
    // A realistic init range: after training, the weights carry what was learned rather than
    // the large random init the exactness tests use.
    from_ = config({16, 32, 3, 4, 2});
    source_ = make_parameters(cpu_, from_);
    init_parameters(source_, from_, 2);
    const double trained = test::train_briefly(cpu_, from_, source_, 60, 1e-2);
    ASSERT_LT(trained, 0.8 * std::log(31.0)) << "the source must have learned something";
    source_loss_ = test::validation_loss(cpu_, from_, source_);
  }

  Arena arena_;
  CpuBackend cpu_{arena_};
  ModelConfig from_;
  ParameterSet source_;
  double source_loss_ = 0;
};

TEST_F(TrainedSource, AkiLossAtStepZeroIsWithinTwoPercentOfTheSource) {
  const ModelConfig to = config({32, 64, 6, 8, 4});
  GrowOptions options;
  options.method = GrowMethod::aki;
  ParameterSet grown = grow_parameters(cpu_, from_, source_, to, options);
  const double grown_loss = test::validation_loss(cpu_, to, grown);
  std::cout << "validation loss: source " << source_loss_ << ", AKI-grown " << grown_loss << "\n";
  EXPECT_LT(std::abs(grown_loss - source_loss_), 0.02 * source_loss_)
      << "source " << source_loss_ << ", grown " << grown_loss;
  // AKI is not a plain copy: the function moved (symmetry broken), just not far.
  const Tensor tokens = probe_tokens(cpu_, to.vocab_size, 2, 12, 1);
  EXPECT_GT(logit_deviation(cpu_, from_, source_, to, grown, tokens), 1e-4);
}

TEST_F(TrainedSource, FpiLossEqualsTheSource) {
  const ModelConfig to = config({32, 64, 6, 8, 4});
  ParameterSet grown = grow_parameters(cpu_, from_, source_, to, GrowOptions{});
  EXPECT_NEAR(test::validation_loss(cpu_, to, grown), source_loss_, 1e-5 * source_loss_);
}

TEST_F(TrainedSource, NoiseIsSeededSmallAndOnlyOnCopies) {
  const ModelConfig to = config({32, 64, 3, 8, 4});
  GrowOptions options;
  options.noise = 1e-3;
  options.seed = 4;
  ParameterSet a = grow_parameters(cpu_, from_, source_, to, options);
  ParameterSet b = grow_parameters(cpu_, from_, source_, to, options);
  options.seed = 5;
  ParameterSet c = grow_parameters(cpu_, from_, source_, to, options);
  ParameterSet exact = grow_parameters(cpu_, from_, source_, to, GrowOptions{});
  const std::string name = "model.layers.1.mlp.up_proj.weight";
  const float* pa = a.find(name)->value.data<float>();
  const float* pb = b.find(name)->value.data<float>();
  const float* pc = c.find(name)->value.data<float>();
  const float* pe = exact.find(name)->value.data<float>();
  // Row 3 is a first copy of FFN unit 3 (column 2 a first copy of hidden dim 2): untouched.
  EXPECT_EQ(pa[3 * 32 + 2], pe[3 * 32 + 2]);
  // Row 40 is the second copy of unit 8: noisy, reproducibly.
  EXPECT_NE(pa[40 * 32 + 2], pe[40 * 32 + 2]);
  EXPECT_EQ(pa[40 * 32 + 2], pb[40 * 32 + 2]);
  EXPECT_NE(pa[40 * 32 + 2], pc[40 * 32 + 2]);
  const double loss = test::validation_loss(cpu_, to, a);
  EXPECT_NEAR(loss, source_loss_, 0.01 * source_loss_);
}

// Interleaved copies (AquilaMoE's interpolation) and stacked copies both change the function;
// the zero-output layers do not.
TEST_F(TrainedSource, DepthCopiesChangeTheFunctionZeroOutputLayersDoNot) {
  const ModelConfig to = config({16, 32, 6, 4, 2});
  const Tensor tokens = probe_tokens(cpu_, to.vocab_size, 2, 12, 1);
  GrowOptions options;
  ParameterSet zero = grow_parameters(cpu_, from_, source_, to, options);
  EXPECT_LT(logit_deviation(cpu_, from_, source_, to, zero, tokens), 1e-5);
  options.depth_init = DepthInit::copy;
  ParameterSet interleaved = grow_parameters(cpu_, from_, source_, to, options);
  EXPECT_GT(logit_deviation(cpu_, from_, source_, to, interleaved, tokens), 1e-3);
  // L0 L0 L1 L1 L2 L2: target layer 1 is a copy of source layer 0.
  const Parameter* copy = interleaved.find("model.layers.1.self_attn.o_proj.weight");
  const Parameter* orig = source_.find("model.layers.0.self_attn.o_proj.weight");
  EXPECT_EQ(copy->value.data<float>()[7], orig->value.data<float>()[7]);
  options.placement = DepthPlacement::stack;
  ParameterSet stacked = grow_parameters(cpu_, from_, source_, to, options);
  const Parameter* top = stacked.find("model.layers.4.mlp.down_proj.weight");
  const Parameter* layer1 = source_.find("model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(top->value.data<float>()[9], layer1->value.data<float>()[9]);
  std::cout << "validation loss: source " << source_loss_ << ", interleaved copies "
            << test::validation_loss(cpu_, to, interleaved) << ", stacked copies "
            << test::validation_loss(cpu_, to, stacked) << "\n";
}

}  // namespace
}  // namespace metamorph

// KV-cached decoding against recomputing the whole context at every step (AR and block
// diffusion), the step accounting of block diffusion, and prompt errors.
#include <gtest/gtest.h>

#include "runtime/core/error.hpp"
#include "runtime/decode/ar_decoder.hpp"
#include "runtime/decode/diffusion_decoder.hpp"
#include "tests/unit/diffusion/diffusion_test_model.hpp"

namespace metamorph::decode {
namespace {

struct Step {
  std::int64_t first_position;
  std::vector<float> logits;
};

StepObserver recorder(std::vector<Step>& steps) {
  return [&steps](std::int64_t first, const Tensor& logits) {
    steps.push_back(
        {first, std::vector<float>(logits.data<float>(), logits.data<float>() + logits.numel())});
  };
}

void expect_same_steps(const std::vector<Step>& cached, const std::vector<Step>& recomputed) {
  ASSERT_EQ(cached.size(), recomputed.size());
  for (std::size_t s = 0; s < cached.size(); ++s) {
    EXPECT_EQ(cached[s].first_position, recomputed[s].first_position) << "step " << s;
    EXPECT_LT(test::normalised_error(cached[s].logits, recomputed[s].logits), 1e-5) << "step " << s;
  }
}

struct Model {
  Arena arena;
  CpuBackend cpu{arena};
  ModelConfig config = test::diffusion_test_config();
  ParameterSet params;
  std::unique_ptr<Transformer> transformer;
  Model() {
    params = make_parameters(cpu, config);
    init_parameters(params, config, 31);
    transformer = std::make_unique<Transformer>(cpu, config, params);
  }
};

TEST(ArDecoding, CachedLogitsEqualRecomputedContext) {
  Model m;
  const auto prompt = test::random_tokens(5, 22, 3);
  std::vector<Step> cached, recomputed;
  ArDecodeOptions options;
  const Generation a = generate_ar(*m.transformer, prompt, 9, options, recorder(cached));
  options.use_cache = false;
  const Generation b = generate_ar(*m.transformer, prompt, 9, options, recorder(recomputed));
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 9u);
  EXPECT_EQ(a.forward_passes, 9);
  expect_same_steps(cached, recomputed);
  // The first step is the plain causal forward's last row.
  Tensor ids = m.cpu.empty({1, 5}, DType::i32);
  std::copy(prompt.begin(), prompt.end(), ids.data<std::int32_t>());
  const Tensor logits = m.transformer->logits(ids);
  const std::vector<float> last(logits.data<float>() + 4 * 23, logits.data<float>() + 5 * 23);
  EXPECT_LT(test::normalised_error(cached[0].logits, last), 1e-5);
}

TEST(ArDecoding, SamplingIsReproducibleAndNeverPicksTheExcludedToken) {
  Model m;
  const auto prompt = test::random_tokens(3, 22, 4);
  ArDecodeOptions options;
  options.sampling = {1.5, 0.9, 7};
  options.excluded_token = 22;
  const Generation a = generate_ar(*m.transformer, prompt, 12, options);
  const Generation b = generate_ar(*m.transformer, prompt, 12, options);
  EXPECT_EQ(a.tokens, b.tokens);
  for (std::int32_t t : a.tokens) EXPECT_NE(t, 22);
}

struct DiffusionCase {
  std::int64_t block, prompt;
  bool shift;
  friend void PrintTo(const DiffusionCase& c, std::ostream* out) {
    *out << "B" << c.block << " prompt" << c.prompt << (c.shift ? " shift" : "");
  }
};

class DiffusionDecoding : public ::testing::TestWithParam<DiffusionCase> {};

TEST_P(DiffusionDecoding, CachedLogitsEqualRecomputedContext) {
  const DiffusionCase c = GetParam();
  Model m;
  const auto prompt = test::random_tokens(c.prompt, 22, 9);
  DiffusionDecodeOptions options;
  options.block_size = c.block;
  options.threshold = 0.07;  // a random model is unsure: this commits a few tokens per step
  options.mask_token = 22;
  options.logit_shift = c.shift;
  std::vector<Step> cached, recomputed;
  const Generation a = generate_diffusion(*m.transformer, prompt, 14, options, recorder(cached));
  options.use_cache = false;
  const Generation b =
      generate_diffusion(*m.transformer, prompt, 14, options, recorder(recomputed));
  EXPECT_EQ(a.tokens, b.tokens);
  ASSERT_EQ(a.tokens.size(), 14u);
  for (std::int32_t t : a.tokens) EXPECT_NE(t, 22);
  expect_same_steps(cached, recomputed);
  // Recompute runs one pass per step; the cache adds the prefill when the prompt has a whole
  // block.
  EXPECT_EQ(b.forward_passes, static_cast<std::int64_t>(recomputed.size()));
  EXPECT_EQ(a.forward_passes, b.forward_passes + (c.prompt >= c.block ? 1 : 0));
  EXPECT_GT(a.tokens_per_forward(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, DiffusionDecoding,
                         ::testing::Values(DiffusionCase{4, 8, true}, DiffusionCase{4, 6, false},
                                           DiffusionCase{3, 5, true}, DiffusionCase{4, 2, false},
                                           DiffusionCase{1, 4, true}),
                         [](const auto& info) {
                           const auto& c = info.param;
                           return "B" + std::to_string(c.block) + "_prompt" +
                                  std::to_string(c.prompt) + (c.shift ? "_shift" : "_noshift");
                         });

TEST(DiffusionDecoding, StepsPerBlockCapAndZeroThreshold) {
  Model m;
  const auto prompt = test::random_tokens(4, 22, 2);
  DiffusionDecodeOptions options;
  options.block_size = 4;
  options.mask_token = 22;
  options.threshold = 1.0;  // nothing passes: one token per step until the cap
  options.steps_per_block = 2;
  std::vector<Step> steps;
  const Generation capped =
      generate_diffusion(*m.transformer, prompt, 12, options, recorder(steps));
  EXPECT_EQ(steps.size(), 6u);  // 3 blocks x 2 steps
  EXPECT_EQ(capped.forward_passes, 1 + 6);
  options.threshold = 0.0;  // everything passes: one step per block
  const Generation all = generate_diffusion(*m.transformer, prompt, 12, options);
  EXPECT_EQ(all.forward_passes, 1 + 3);
  EXPECT_DOUBLE_EQ(all.tokens_per_forward(), 12.0 / 4.0);
  options.threshold = 1.0;
  options.steps_per_block = 0;  // default cap: the block size, one token per step
  EXPECT_EQ(generate_diffusion(*m.transformer, prompt, 12, options).forward_passes, 1 + 12);
}

TEST(Decoding, BadPromptsAndOptionsAreInputErrors) {
  Model m;
  DiffusionDecodeOptions options;
  options.mask_token = 22;
  EXPECT_THROW(generate_diffusion(*m.transformer, {}, 4, options), InputError);
  EXPECT_THROW(generate_ar(*m.transformer, {}, 4, {}), InputError);
  const auto long_prompt = test::random_tokens(120, 22, 1);
  EXPECT_THROW(generate_ar(*m.transformer, long_prompt, 9, {}), InputError);
  EXPECT_THROW(generate_diffusion(*m.transformer, long_prompt, 9, options), InputError);
  options.threshold = 1.5;
  EXPECT_THROW(generate_diffusion(*m.transformer, {1, 2}, 4, options), InputError);
  options.threshold = 0.9;
  options.mask_token = 23;
  EXPECT_THROW(generate_diffusion(*m.transformer, {1, 2}, 4, options), InputError);
  ArDecodeOptions bad;
  bad.sampling.top_p = 0.0;
  EXPECT_THROW(generate_ar(*m.transformer, {1, 2}, 4, bad), InputError);
}

}  // namespace
}  // namespace metamorph::decode

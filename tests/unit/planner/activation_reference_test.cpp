// The activation accounting against PyTorch: a GPT layer's bytes saved for backward, measured
// with saved-tensor hooks by tests/reference/planner_gpt_activations.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "planner/cost_model.hpp"
#include "planner/presets.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::planner {
namespace {

double pytorch_saved_bytes(int64_t s, int64_t b, int64_t h, int64_t a) {
  const auto script = std::filesystem::path(METAMORPH_REFERENCE_DIR) / "planner_gpt_activations.py";
  const auto r =
      test::run_shell(test::python() + " " + script.string() + " " + std::to_string(s) + " " +
                      std::to_string(b) + " " + std::to_string(h) + " " + std::to_string(a));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  return nlohmann::json::parse(r.out.substr(r.out.find('{')))["bytes"].get<double>();
}

TEST(ActivationReference, GptLayerMatchesPyTorchSavedTensors) {
  struct Shape {
    int64_t seq, batch, hidden, heads;
  };
  for (const Shape& shape : {Shape{128, 2, 256, 8}, Shape{256, 1, 512, 4}}) {
    nlohmann::json config = preset_config("gpt3-175b");
    config["hidden_size"] = shape.hidden;
    config["intermediate_size"] = 4 * shape.hidden;
    config["num_attention_heads"] = shape.heads;
    config["num_key_value_heads"] = shape.heads;
    config["num_hidden_layers"] = 1;
    const ModelShape model = model_shape_from_json(config);
    Job job;
    job.seq = shape.seq;
    job.global_batch = shape.batch;
    set_precision(job, "fp32");
    Layout layout;
    layout.micro_batch = static_cast<int>(shape.batch);
    const double predicted = stored_activation_bytes(model, job, layout, 0);
    const double measured = pytorch_saved_bytes(shape.seq, shape.batch, shape.hidden, shape.heads);
    // PyTorch also keeps LayerNorm's per-token mean and rstd (16 bytes a token), which the
    // Korthikanti accounting leaves out.
    EXPECT_NEAR(predicted / measured, 1.0, 0.005) << predicted << " vs " << measured;
  }
}

}  // namespace
}  // namespace metamorph::planner

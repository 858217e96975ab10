// The backward's tensor-parallel all-reduces overlap the weight-gradient GEMMs (Megatron's
// asynchronous TP all-reduce): each input gradient's sum is started before the weight gradients
// of the projections that produced it are written, and waited for after them. A fake TP group
// (rank 0 of 2, whose sums leave tensors as they are) records, at every start and every wait,
// which watched weight gradients hold values yet. A blocking sum in their place records nothing.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "models/init.hpp"
#include "models/transformer.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"

namespace metamorph {
namespace {

bool written(const Tensor& grad) {
  const float* g = grad.data<float>();
  for (std::int64_t i = 0; i < grad.numel(); ++i)
    if (g[i] != 0.0f) return true;
  return false;
}

struct Watched {
  std::string label;
  const Parameter* param;
};

// "start" or "wait", then the labels of the watched gradients already written.
std::string snapshot(const char* event, const std::vector<Watched>& watched) {
  std::string s = event;
  for (const Watched& w : watched)
    if (written(w.param->grad)) s += std::string(" ") + w.label;
  return s;
}

class TpOverlap : public ::testing::Test {
 protected:
  // Runs one forward and backward of a one-layer model as TP rank 0 of 2 and returns the events.
  std::vector<std::string> run(const nlohmann::json& model_json,
                               const std::vector<std::pair<std::string, std::string>>& watch) {
    const ModelConfig config = model_config_from_json(model_json);
    std::vector<std::string> events;
    std::vector<Watched> watched;
    TensorParallel tp;
    tp.rank = 0;
    tp.size = 2;
    tp.all_reduce_sum = [](Tensor&) {};
    tp.all_reduce_max = [](Tensor&) {};
    tp.start_all_reduce_sum = [&](Tensor&) -> std::function<void()> {
      events.push_back(snapshot("start", watched));
      return [&] { events.push_back(snapshot("wait", watched)); };
    };
    ParameterSet params = make_parameters(cpu_, config, tp);
    init_parameters(params, config, 3);
    for (const auto& [label, name] : watch) {
      const Parameter* p = params.find(name);
      EXPECT_NE(p, nullptr) << name;
      if (p != nullptr) watched.push_back({label, p});
    }
    Transformer model(cpu_, config, params, {}, tp);
    Tensor tokens = cpu_.empty({2, 8}, DType::i32), targets = cpu_.empty({2, 8}, DType::i32);
    for (int i = 0; i < 16; ++i) {
      tokens.data<std::int32_t>()[i] = (i * 37 + 5) % 64;
      targets.data<std::int32_t>()[i] = (i * 11 + 3) % 64;
    }
    model.forward_backward(tokens, targets, 1.0f / 16);
    return events;
  }

  Arena arena_;
  CpuBackend cpu_{arena_};
};

const nlohmann::json kDense = {{"vocab_size", 64},
                               {"hidden_size", 32},
                               {"intermediate_size", 48},
                               {"num_hidden_layers", 1},
                               {"num_attention_heads", 4},
                               {"num_key_value_heads", 2},
                               {"tie_word_embeddings", false}};

TEST_F(TpOverlap, BackwardSumsStartBeforeAndWaitAfterTheWeightGradients) {
  const std::string l = "model.layers.0.";
  const std::vector<std::string> events = run(kDense, {{"head", "lm_head.weight"},
                                                       {"down", l + "mlp.down_proj.weight"},
                                                       {"gate", l + "mlp.gate_proj.weight"},
                                                       {"up", l + "mlp.up_proj.weight"},
                                                       {"o", l + "self_attn.o_proj.weight"},
                                                       {"q", l + "self_attn.q_proj.weight"},
                                                       {"k", l + "self_attn.k_proj.weight"},
                                                       {"v", l + "self_attn.v_proj.weight"}});
  // The LM head's input gradient, then the MLP's (down_proj's weight gradient comes before its
  // input gradient), then the attention's.
  const std::vector<std::string> expected = {
      "start",
      "wait head",
      "start head down",
      "wait head down gate up",
      "start head down gate up",
      "wait head down gate up o q k v",
  };
  EXPECT_EQ(events, expected);
}

TEST_F(TpOverlap, MoeBlockDefersItsExpertsRouterAndSharedExpertWeightGradients) {
  nlohmann::json moe = kDense;
  moe["model_type"] = "qwen2_moe";
  moe["num_experts"] = 4;
  moe["num_experts_per_tok"] = 2;
  moe["moe_intermediate_size"] = 16;
  moe["shared_expert_intermediate_size"] = 24;
  const std::string l = "model.layers.0.mlp.";
  const std::vector<std::string> events =
      run(moe, {{"router", l + "gate.weight"},
                {"shared_gate", l + "shared_expert_gate.weight"},
                {"shared_up", l + "shared_expert.up_proj.weight"},
                {"shared_down", l + "shared_expert.down_proj.weight"},
                {"expert_gate", l + "experts.0.gate_proj.weight"},
                {"expert_up", l + "experts.0.up_proj.weight"},
                {"expert_down", l + "experts.0.down_proj.weight"}});
  ASSERT_EQ(events.size(), 6u);
  // Down projections' weight gradients come before their input gradients, the rest after.
  EXPECT_EQ(events[2], "start shared_down expert_down");
  EXPECT_EQ(events[3],
            "wait router shared_gate shared_up shared_down expert_gate expert_up expert_down");
}

}  // namespace
}  // namespace metamorph

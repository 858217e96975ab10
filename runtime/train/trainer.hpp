#pragma once
// The training loop on one data-parallel replica: gradient accumulation over micro-batches,
// loss normalised by the global token count, clipping, AdamW, LR schedule, non-finite detection,
// periodic validation.
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/transformer.hpp"
#include "runtime/train/batch_source.hpp"
#include "runtime/train/lr_schedule.hpp"
#include "runtime/train/micro_batch_objective.hpp"
#include "runtime/train/optimizer.hpp"

namespace metamorph {

enum class NonFinitePolicy { stop, skip };

// What a data-parallel replica must agree on with the others. Identity on one rank.
struct ReplicaSync {
  int dp_size = 1;
  int dp_rank = 0;  // this replica's place: it holds global rows [dp_rank * rows, ...)
  // A scalar summed over the data-parallel replicas (token counts, loss sums).
  std::function<double(double)> sum_over_dp = [](double x) { return x; };
  // After the last micro-batch: sum gradients over the replicas (and any partial gradients
  // over the tensor-parallel group).
  std::function<void()> reduce_gradients = [] {};
  // Around the step's last backward: gradients may be reduced while it runs.
  std::function<void()> last_backward_begins = [] {};
  std::function<void()> last_backward_ends = [] {};
  // After the optimizer step (ZeRO-1: gather the replicas' updated rows).
  std::function<void()> after_update = [] {};
  // Per-expert token counts summed over the replicas (MoE balancing bias and metrics), in place.
  std::function<void(std::vector<double>&)> sum_counts_over_dp = [](std::vector<double>&) {};
};

// How a pipeline stage talks to its neighbours; unused on a single stage. Sends may return
// before the data is delivered: the trainer calls wait_sends() before reusing anything.
struct PipelineLinks {
  std::function<void(const Tensor&)> send_forward;   // activations to the next stage
  std::function<void(Tensor&)> recv_forward;         // from the previous stage
  std::function<void(const Tensor&)> send_backward;  // input gradients to the previous stage
  std::function<void(Tensor&)> recv_backward;        // from the next stage
  std::function<void()> wait_sends = [] {};
  // The last stage's loss sums reach every stage.
  std::function<double(double)> sum_over_stages = [](double x) { return x; };
};

struct TrainOptions {
  std::int64_t steps = 1;
  std::int64_t micro_batch = 1;
  std::int64_t global_batch = 1;  // sequences per optimizer step
  LrSchedule lr;
  std::int64_t eval_every = 0;    // 0: only at the end
  std::int64_t eval_batches = 4;  // micro-batches of validation data per evaluation
  NonFinitePolicy on_nonfinite = NonFinitePolicy::stop;
  // One pipeline stage only: the passes two at a time through
  // Transformer::forward_backward_interleaved (an odd last one alone).
  bool interleave_pairs = false;
  ReplicaSync sync;
  PipelineLinks pipeline;
};

// One MoE layer's routing over a step's training micro-batches (docs/moe.md).
struct MoeLayerMetrics {
  std::int64_t layer = 0;
  double tokens_min = 0.0, tokens_max = 0.0;  // routed slots per expert (summed over replicas)
  double tokens_cv = 0.0;                     // their coefficient of variation (std / mean)
  double aux_loss = 0.0;                      // mean over the micro-batches, coefficient applied
  double z_loss = 0.0;
  double router_entropy = 0.0;            // nats, mean per token
  double drop_rate = 0.0;                 // slots dropped over capacity / routed slots
  std::vector<double> tokens_per_expert;  // routed slots of each expert (summed over replicas)
};

struct StepMetrics {
  std::int64_t step = 0;
  double loss = 0.0;  // mean over the step's tokens
  double lr = 0.0;
  double grad_norm = 0.0;
  std::int64_t tokens = 0;  // consumed so far (inputs)
  double tokens_per_s = 0.0;
  std::size_t peak_bytes = 0;
  // The largest peak_bytes of any rank (filled by the run that owns the communicators; the
  // planner's per-GPU prediction is for the busiest rank, which under PP or EP need not be rank 0).
  std::size_t peak_bytes_max = 0;
  bool skipped = false;
  std::optional<double> val_loss;
  // Bytes this rank sent in the step, per communicator group (docs/parallelism.md convention);
  // filled by the run that owns the communicators.
  std::map<std::string, std::uint64_t> comm_bytes;
  std::vector<MoeLayerMetrics> moe;  // this stage's MoE layers
  // Seconds per timer region of this rank's step (train --timers: the backend carries
  // StepTimers), in the order the regions were first entered; empty without timers.
  std::vector<std::pair<std::string, double>> timers;
};

class Trainer {
 public:
  Trainer(Backend& backend, Transformer& model, AdamW& optimizer, TrainOptions options,
          BatchSource& train_data, BatchSource* validation_data);

  // One optimizer step; throws CheckFailed (policy stop) on a non-finite loss or gradient.
  StepMetrics step();
  // Mean validation loss over eval_batches micro-batches (the validation source is rewound to
  // where it started, so every evaluation sees the same tokens).
  double validate();
  std::int64_t steps_done() const { return steps_done_; }
  std::int64_t tokens_done() const { return tokens_done_; }
  // Replaces next-token prediction; the objective must outlive the trainer. nullptr: AR.
  void set_objective(MicroBatchObjective* objective) { objective_ = objective; }
  void set_progress(std::int64_t steps, std::int64_t tokens) {
    steps_done_ = steps;
    tokens_done_ = tokens;
  }

 private:
  void split_rows(const std::int32_t* rows, std::int64_t count, std::int64_t seq, Tensor& inputs,
                  Tensor& targets);
  // Next-token prediction on count rows of seq + 1 tokens as one model pass (the model's own
  // positions and mask).
  ModelPass next_token_pass(const std::int32_t* rows, std::int64_t count, std::int64_t seq);
  // Forward of one pass through this stage (receiving from / sending to the neighbours).
  Tensor forward_pass(const ModelPass& pass, bool keep);
  // The micro-batches of one step through this stage in the 1F1B order (Narayanan et al.
  // 2021): warm-up forwards, alternating forward/backward, cool-down backwards. Returns the
  // summed loss this stage saw (non-zero on the last stage only).
  // Reads and resets the MoE blocks' statistics; after an update, nudges the balancing biases.
  std::vector<MoeLayerMetrics> finish_moe_step(bool updated);
  double run_one_f_one_b(const std::vector<ModelPass>& passes, float grad_scale);
  // The same on one stage with the passes in interleaved pairs (the order of their gradient
  // accumulation and loss sums unchanged).
  double run_interleaved_pairs(const std::vector<ModelPass>& passes, float grad_scale);

  Backend& backend_;
  Transformer& model_;
  AdamW& optimizer_;
  TrainOptions options_;
  BatchSource& train_;
  BatchSource* validation_;
  MicroBatchObjective* objective_ = nullptr;
  std::int64_t steps_done_ = 0;
  std::int64_t tokens_done_ = 0;
};

}  // namespace metamorph

#include "runtime/transforms/upcycle_checkpoint.hpp"

#include <algorithm>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/transforms/logit_deviation.hpp"
#include "runtime/transforms/source_checkpoint.hpp"
#include "runtime/transforms/upcycle.hpp"

namespace metamorph {

namespace fs = std::filesystem;

UpcycleSummary upcycle_checkpoint(const fs::path& from, const UpcycleOptions& options,
                                  const fs::path& out) {
  require_new_output(out, "upcycle");
  const SourceCheckpoint source_checkpoint = open_source_checkpoint(from);
  UpcycleSummary summary;
  summary.from = source_checkpoint.config;
  summary.to = upcycled_config(summary.from, options);  // validates before reading any tensor

  Arena arena;
  CpuBackend cpu(arena);
  CheckpointState source_state;
  ParameterSet source = load_whole_source(cpu, source_checkpoint, source_state, "upcycle");
  ParameterSet moe = upcycle_parameters(cpu, summary.from, source, options);
  summary.from_parameters = parameter_count(summary.from);
  summary.to_parameters = parameter_count(summary.to);
  summary.active_parameters = active_parameter_count(summary.to);
  const std::int64_t probe_seq = std::min<std::int64_t>(32, summary.from.max_position_embeddings);
  const Tensor probe = probe_tokens(cpu, summary.from.vocab_size, 2, probe_seq, 1);
  summary.logit_deviation = logit_deviation(cpu, summary.from, source, summary.to, moe, probe);

  const nlohmann::json extra = {
      {"upcycled_from", source_record(source_checkpoint.dir, source_state)},
      {"upcycle",
       {{"experts", options.experts},
        {"top_k", options.top_k},
        {"granularity", options.granularity},
        {"shared_experts", options.shared_experts},
        {"shared_fraction", options.shared_fraction},
        {"shared_expert_gate", options.shared_expert_gate},
        {"router_std", options.router_std},
        {"independent_segment_routers", options.independent_segment_routers},
        {"noise", options.noise},
        {"drop_fraction", options.drop_fraction},
        {"seed", options.seed},
        {"logit_deviation", summary.logit_deviation}}}};
  summary.saved = save_transformed(out, moe, summary.to, extra);
  return summary;
}

}  // namespace metamorph

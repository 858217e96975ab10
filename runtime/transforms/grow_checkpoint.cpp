#include "runtime/transforms/grow_checkpoint.hpp"

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/transforms/grow.hpp"
#include "runtime/transforms/source_checkpoint.hpp"

namespace metamorph {

namespace fs = std::filesystem;

GrowSummary grow_checkpoint(const fs::path& from, const ModelConfig& to, const GrowOptions& options,
                            const fs::path& out) {
  require_new_output(out, "grow");
  const SourceCheckpoint source_checkpoint = open_source_checkpoint(from);
  GrowSummary summary;
  summary.from = source_checkpoint.config;
  summary.to = to;
  validate_growth(summary.from, to, options);  // before reading any tensor

  Arena arena;
  CpuBackend cpu(arena);
  CheckpointState source_state;
  ParameterSet source = load_whole_source(cpu, source_checkpoint, source_state, "grow");
  ParameterSet grown = grow_parameters(cpu, summary.from, source, to, options);
  summary.from_parameters = parameter_count(summary.from);
  summary.to_parameters = parameter_count(to);
  const std::int64_t probe_seq = std::min<std::int64_t>(32, summary.from.max_position_embeddings);
  const Tensor probe = probe_tokens(cpu, to.vocab_size, 2, probe_seq, 1);
  summary.logit_deviation = logit_deviation(cpu, summary.from, source, to, grown, probe);

  const nlohmann::json extra = {{"grown_from", source_record(source_checkpoint.dir, source_state)},
                                {"grow",
                                 {{"method", to_string(options.method)},
                                  {"placement", to_string(options.placement)},
                                  {"new_layer_positions", options.new_layer_positions},
                                  {"depth_init", to_string(options.depth_init)},
                                  {"hidden_copies", to_string(options.hidden_copies)},
                                  {"noise", options.noise},
                                  {"seed", options.seed},
                                  {"logit_deviation", summary.logit_deviation}}}};
  summary.saved = save_transformed(out, grown, to, extra);
  return summary;
}

}  // namespace metamorph

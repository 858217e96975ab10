#include "runtime/transforms/grow_checkpoint.hpp"

#include "models/init.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/core/error.hpp"
#include "runtime/transforms/grow.hpp"

namespace metamorph {

namespace fs = std::filesystem;

GrowSummary grow_checkpoint(const fs::path& from, const ModelConfig& to, const GrowOptions& options,
                            const fs::path& out) {
  require(!fs::exists(out) || (fs::is_directory(out) && fs::is_empty(out)), "grow: --out ",
          out.string(), " already exists and is not empty; give a new directory");
  const fs::path dir = resolve_checkpoint(from);
  GrowSummary summary;
  summary.from = model_config_from_json(checkpoint::read_index_file(dir).state.config);
  summary.to = to;
  validate_growth(summary.from, to, options);  // before reading any tensor

  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet source = make_parameters(cpu, summary.from);
  LoadOptions load;
  load.with_optimizer = false;
  const CheckpointState source_state = load_checkpoint(dir, source, load);
  ParameterSet grown = grow_parameters(cpu, summary.from, source, to, options);
  summary.from_parameters = parameter_count(summary.from);
  summary.to_parameters = parameter_count(to);
  const std::int64_t probe_seq = std::min<std::int64_t>(32, summary.from.max_position_embeddings);
  const Tensor probe = probe_tokens(cpu, to.vocab_size, 2, probe_seq, 1);
  summary.logit_deviation = logit_deviation(cpu, summary.from, source, to, grown, probe);

  CheckpointState state;
  state.config = model_config_to_json(to);
  state.layout = {{"tp", 1}, {"pp", 1}, {"dp", 1}, {"ep", 1}, {"zero1", false}};
  state.extra = {{"grown_from",
                  {{"checkpoint", dir.string()},
                   {"step", source_state.step},
                   {"tokens", source_state.tokens},
                   {"config", source_state.config}}},
                 {"grow",
                  {{"method", to_string(options.method)},
                   {"placement", to_string(options.placement)},
                   {"new_layer_positions", options.new_layer_positions},
                   {"depth_init", to_string(options.depth_init)},
                   {"hidden_copies", to_string(options.hidden_copies)},
                   {"noise", options.noise},
                   {"seed", options.seed},
                   {"logit_deviation", summary.logit_deviation}}}};
  SaveOptions save;
  save.with_optimizer = false;
  summary.saved = save_checkpoint(out, grown, state, RankContext{}, save);
  return summary;
}

}  // namespace metamorph

#include "runtime/transforms/source_checkpoint.hpp"

#include "models/init.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;

SourceCheckpoint open_source_checkpoint(const fs::path& from) {
  SourceCheckpoint source;
  source.dir = resolve_checkpoint(from);
  source.config = model_config_from_json(checkpoint::read_index_file(source.dir).state.config);
  return source;
}

ParameterSet load_whole_source(Backend& backend, const SourceCheckpoint& source,
                               CheckpointState& state, const std::string& command) {
  ParameterSet params = make_parameters(backend, source.config);
  LoadOptions load;
  load.with_optimizer = false;
  state = load_checkpoint(source.dir, params, load);
  check_whole_source(backend, source.config, params, command);
  return params;
}

void check_whole_source(Backend& backend, const ModelConfig& config, const ParameterSet& params,
                        const std::string& command) {
  for (const auto& spec : parameter_specs(config)) {
    const Parameter* p = params.find(spec.name);
    require(p != nullptr, command, ": the source model has no parameter ", spec.name,
            " although its config needs it");
    require(p->global_shape == spec.shape && !p->is_sharded(), command, ": source parameter ",
            spec.name, " has shape ", shape_string(p->value.shape()), ", expected the whole ",
            shape_string(spec.shape), " of the source config");
    require(p->value.dtype() == DType::f32, command, ": source parameter ", spec.name,
            " must be f32 master weights, got ", dtype_name(p->value.dtype()));
    require(backend.all_finite(p->value), command, ": source parameter ", spec.name,
            " holds NaN or infinite values; ", command, " a checkpoint from before the divergence");
  }
}

void require_new_output(const fs::path& out, const std::string& command) {
  require(!fs::exists(out) || (fs::is_directory(out) && fs::is_empty(out)), command, ": --out ",
          out.string(), " already exists and is not empty; give a new directory");
}

nlohmann::json source_record(const fs::path& dir, const CheckpointState& state) {
  return {{"checkpoint", dir.string()},
          {"step", state.step},
          {"tokens", state.tokens},
          {"config", state.config}};
}

fs::path save_transformed(const fs::path& out, const ParameterSet& params,
                          const ModelConfig& config, nlohmann::json extra) {
  CheckpointState state;
  state.config = model_config_to_json(config);
  state.layout = {{"tp", 1}, {"pp", 1}, {"dp", 1}, {"ep", 1}, {"zero1", false}};
  state.extra = std::move(extra);
  SaveOptions save;
  save.with_optimizer = false;
  return save_checkpoint(out, params, state, RankContext{}, save);
}

}  // namespace metamorph

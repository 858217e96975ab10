#include <nlohmann/json.hpp>

#include "models/expert_parallel.hpp"
#include "runtime/checkpoint/file_sync.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/checkpoint/save_protocol.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;

namespace checkpoint {

namespace {

ShardView view_of(const Parameter& p, TensorKind kind, const Tensor& tensor, const Shape& offset) {
  require(tensor.device() == Device::cpu, "tensor ", p.name,
          ": copy GPU tensors to the host before saving");
  return {{p.name, kind, stored_dtype_of(tensor.dtype()), p.global_shape, offset, tensor.shape()},
          tensor.raw()};
}

// One agreement step: every rank learns whether all succeeded; a failure elsewhere becomes an
// error here too, so no rank goes on to commit alone.
void agree(const RankContext& context, bool ok, const std::string& error, const std::string& stage,
           std::int64_t step) {
  const bool all = context.all_ok(ok);
  if (!ok) throw InputError(error);
  if (!all)
    throw InputError(concat("checkpoint save of step ", step, " aborted: another rank failed ",
                            stage, " (its error names the file and tensor)"));
}

nlohmann::json commit_record(const fs::path& dir, const CheckpointState& state) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file()) files[entry.path().filename().string()] = entry.file_size();
  return {{"step", state.step},
          {"world_size", state.world_size},
          {"format_version", kFormatVersion},
          {"files", files}};
}

// Rank 0, once every rank file is on disk: index, marker, rename, latest.
fs::path commit(const fs::path& root, const fs::path& tmp, const CheckpointState& state) {
  std::vector<std::vector<ShardRecord>> per_rank;
  for (int r = 0; r < state.world_size; ++r)
    per_rank.push_back(read_shard_table(tmp / rank_file_name(r)));
  const auto tensors = merge_shards(per_rank);
  write_index_file(tmp, tensors, state);
  write_file_atomically(tmp / kCommitMarker, commit_record(tmp, state).dump(1) + "\n");
  sync_path(tmp);

  const std::string name = step_dir_name(state.step);
  const fs::path final_dir = root / name;
  const fs::path aside = root / (name + kTrashSuffix);
  std::error_code error;
  if (fs::exists(final_dir)) {
    // Saving a step again (a resumed run): the old copy moves aside until the new one is in.
    fs::remove_all(aside, error);
    fs::rename(final_dir, aside, error);
    require(!error, "cannot move the previous ", final_dir.string(), " aside: ", error.message());
  }
  fs::rename(tmp, final_dir, error);
  require(!error, "cannot rename ", tmp.string(), " to ", final_dir.string(), ": ",
          error.message());
  sync_path(root);
  write_file_atomically(root / kLatestFile, name + "\n");
  fs::remove_all(aside, error);
  return final_dir;
}

}  // namespace

std::vector<ShardView> parameter_shard_views(const ParameterSet& params, const RankContext& context,
                                             bool with_optimizer) {
  std::vector<ShardView> views;
  for (const auto& p : params.all()) {
    require(p.value.defined(), "tensor ", p.name, " has no value to save");
    const Shape& offset = p.offset.empty() ? Shape(p.global_shape.size(), 0) : p.offset;
    const bool expert = is_expert_parameter(p.name);
    const int model_replica = expert && context.expert_model_replica >= 0
                                  ? context.expert_model_replica
                                  : context.model_replica;
    const int optim_replica = expert && context.expert_optim_replica >= 0
                                  ? context.expert_optim_replica
                                  : context.optim_replica;
    if (model_replica == 0) views.push_back(view_of(p, TensorKind::model, p.value, offset));
    if (!with_optimizer || optim_replica != 0) continue;
    const Shape& optim_offset = p.optim_offset.empty() ? offset : p.optim_offset;
    if (p.master.defined()) views.push_back(view_of(p, TensorKind::master, p.master, optim_offset));
    if (p.adam_m.defined()) views.push_back(view_of(p, TensorKind::adam_m, p.adam_m, optim_offset));
    if (p.adam_v.defined()) views.push_back(view_of(p, TensorKind::adam_v, p.adam_v, optim_offset));
  }
  return views;
}

SaveInProgress begin_save(const fs::path& root, const CheckpointState& input_state,
                          const RankContext& context, const SaveOptions& options) {
  require(context.world >= 1 && context.rank >= 0 && context.rank < context.world,
          "checkpoint save: rank ", context.rank, " is not in a world of ", context.world);
  require(options.keep_last >= 0, "--keep-last must be 0 (keep all) or positive, got ",
          options.keep_last);
  SaveInProgress save;
  save.root = root;
  save.state = input_state;
  save.state.world_size = context.world;
  save.tmp = root / (step_dir_name(save.state.step) + kTmpSuffix);
  std::string error;
  if (context.rank == 0) {
    try {
      fs::create_directories(root);
      fs::remove_all(save.tmp);
      fs::create_directory(save.tmp);
      sync_path(root);
    } catch (const std::exception& e) {
      error = save.failure(e.what());
    }
  }
  agree(context, error.empty(), error, "to create the directory", save.state.step);
  return save;
}

std::string SaveInProgress::failure(const std::string& what) const {
  return concat("checkpoint save of step ", state.step, " in ", root.string(), ": ", what);
}

std::string write_rank_shards(const SaveInProgress& save,
                              const std::function<std::vector<ShardView>()>& shards,
                              const RankContext& context, const SaveOptions& options) {
  try {
    write_rank_file(save.tmp / rank_file_name(context.rank), shards(), options.before_write);
  } catch (const std::exception& e) {
    return save.failure(e.what());
  }
  return {};
}

fs::path end_save(const SaveInProgress& save, const std::string& write_error,
                  const RankContext& context, const SaveOptions& options) {
  agree(context, write_error.empty(), write_error, "to write its rank file", save.state.step);
  fs::path final_dir = save.root / step_dir_name(save.state.step);
  std::string error;
  if (context.rank == 0) {
    try {
      final_dir = commit(save.root, save.tmp, save.state);
    } catch (const std::exception& e) {
      error = save.failure(e.what());
    }
  }
  agree(context, error.empty(), error, "to commit", save.state.step);

  if (context.rank == 0 && options.keep_last > 0) {
    try {
      apply_retention(save.root, options.keep_last);
    } catch (const std::exception&) {
      // Retention is housekeeping: the new checkpoint is committed whether or not it succeeds.
    }
  }
  return final_dir;
}

fs::path save_shards(const fs::path& root, const std::function<std::vector<ShardView>()>& shards,
                     const CheckpointState& state, const RankContext& context,
                     const SaveOptions& options) {
  const SaveInProgress save = begin_save(root, state, context, options);
  return end_save(save, write_rank_shards(save, shards, context, options), context, options);
}

}  // namespace checkpoint

fs::path save_checkpoint(const fs::path& root, const ParameterSet& params,
                         const CheckpointState& state, const RankContext& context,
                         const SaveOptions& options) {
  return checkpoint::save_shards(
      root,
      [&] { return checkpoint::parameter_shard_views(params, context, options.with_optimizer); },
      state, context, options);
}

}  // namespace metamorph

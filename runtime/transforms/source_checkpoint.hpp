#pragma once
// What every shape transform (grow, upcycle) does around its arithmetic: read a trained
// checkpoint whole, whatever layout saved it, check the tensors, and save the transformed model
// as a fresh single-rank checkpoint that loads under any layout.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/checkpoint/checkpoint_state.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

// A checkpoint's committed step directory and model config, read without touching a tensor, so
// that a transform can reject a bad request before loading anything.
struct SourceCheckpoint {
  std::filesystem::path dir;
  ModelConfig config;
};

// `from` is a checkpoint root (its latest step) or a step directory; InputError otherwise.
SourceCheckpoint open_source_checkpoint(const std::filesystem::path& from);

// Every parameter of the source, whole (unsharded) f32 tensors, no optimizer state, checked with
// check_whole_source; `state` receives the run's state (step, tokens, config).
ParameterSet load_whole_source(Backend& backend, const SourceCheckpoint& source,
                               CheckpointState& state, const std::string& command);

// InputError (prefixed "<command>: ") unless `params` holds every parameter of `config` whole, as
// f32, and finite: a transform of a diverged or mismatched model would only hide the problem.
void check_whole_source(Backend& backend, const ModelConfig& config, const ParameterSet& params,
                        const std::string& command);

// InputError unless `out` is absent or an empty directory: a transform never overwrites.
void require_new_output(const std::filesystem::path& out, const std::string& command);

// Where a transformed model came from, for its checkpoint's `extra`: the source directory,
// step, tokens and config.
nlohmann::json source_record(const std::filesystem::path& dir, const CheckpointState& state);

// Saves `params` (whole tensors of `config`) under `out` as step 0 with no optimizer state and
// a single-rank layout; `extra` goes into the checkpoint's state. Returns the step directory.
std::filesystem::path save_transformed(const std::filesystem::path& out, const ParameterSet& params,
                                       const ModelConfig& config, nlohmann::json extra);

}  // namespace metamorph

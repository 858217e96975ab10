#pragma once
// plan.json: the layout `metamorph plan` chose, with everything needed to run it
// (`metamorph train --plan plan.json`) and the predictions to check a run against.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "planner/cost_model.hpp"

namespace metamorph::planner {

struct Plan {
  Layout layout;
  Job job;
  ModelShape model;
  nlohmann::json model_config;  // the config as given (HF fields), inline
  std::string model_source;     // path or preset name it came from; informational
  Cluster cluster;
  nlohmann::json predictions;  // memory_bytes, step_time_s, tokens_per_s, mfu, comm_bytes

  int world_size() const { return layout.world(); }
};

Plan make_plan(const ModelShape& model, const nlohmann::json& model_config,
               const std::string& model_source, const Job& job, const Cluster& cluster,
               const Evaluation& evaluation);

nlohmann::json plan_to_json(const Plan& plan);
// Validates every field (types, ranges, tp*pp*dp, batch arithmetic, the layout against the
// model). Throws InputError naming the field.
Plan plan_from_json(const nlohmann::json& doc);

// Writes to a temporary name and renames, so a crash never leaves half a plan.
void save_plan(const Plan& plan, const std::filesystem::path& path);
Plan load_plan(const std::filesystem::path& path);

// The trainer's check: throws InputError naming both numbers when the plan was made for a
// different number of ranks than the job runs on.
void require_world_size(const Plan& plan, int ranks);

// One candidate as `metamorph plan --json` prints it.
nlohmann::json evaluation_to_json(const Evaluation& evaluation);

}  // namespace metamorph::planner

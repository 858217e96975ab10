#include "planner/plan_file.hpp"

#include <fstream>
#include <system_error>

#include "runtime/core/error.hpp"

namespace metamorph::planner {

namespace {

using nlohmann::json;

constexpr const char* kFormat = "metamorph-plan";
constexpr int kVersion = 1;

const json& field(const json& doc, const char* key, const char* where) {
  require(doc.is_object() && doc.contains(key), "plan: missing field '", where, key, "'");
  return doc[key];
}

int64_t positive(const json& doc, const char* key, const char* where) {
  const json& v = field(doc, key, where);
  require(v.is_number_integer() && v.get<int64_t>() > 0, "plan: field '", where, key,
          "' must be a positive integer, got ", v.dump());
  return v.get<int64_t>();
}

bool boolean(const json& doc, const char* key, const char* where) {
  const json& v = field(doc, key, where);
  require(v.is_boolean(), "plan: field '", where, key, "' must be true or false, got ", v.dump());
  return v.get<bool>();
}

std::string text(const json& doc, const char* key, const char* where) {
  const json& v = field(doc, key, where);
  require(v.is_string(), "plan: field '", where, key, "' must be a string, got ", v.dump());
  return v.get<std::string>();
}

json memory_to_json(const MemoryBreakdown& m) {
  return {
      {"total", m.total()},       {"weights", m.weights},         {"grads", m.grads},
      {"optimizer", m.optimizer}, {"activations", m.activations}, {"comm_buffers", m.comm_buffers},
      {"workspace", m.workspace}};
}

json time_to_json(const StepTime& t) {
  return {{"total", t.total()},         {"compute", t.compute},
          {"tp_comm", t.tp_comm},       {"pp_bubble", t.pp_bubble},
          {"pp_p2p", t.pp_p2p},         {"ep_all_to_all", t.ep_all_to_all},
          {"dp_exposed", t.dp_exposed}, {"optimizer", t.optimizer}};
}

json comm_to_json(const CommVolume& c) {
  json entries = json::array();
  for (const auto& e : c.entries)
    entries.push_back({{"group", e.group},
                       {"op", e.op},
                       {"group_size", e.group_size},
                       {"count", e.count},
                       {"message_bytes", e.message_bytes},
                       {"bytes_per_rank", e.bytes_per_rank}});
  return entries;
}

}  // namespace

json evaluation_to_json(const Evaluation& e) {
  const Layout& l = e.layout;
  json j = {{"layout", layout_label(l)},
            {"tp", l.tp},
            {"pp", l.pp},
            {"vpp", l.vpp},
            {"ep", l.ep},
            {"etp", l.etp},
            {"dp", l.dp},
            {"micro_batch", l.micro_batch},
            {"num_micro_batches", l.num_micro_batches},
            {"recompute", recompute_name(l.recompute)},
            {"zero1", l.zero1},
            {"sequence_parallel", l.sequence_parallel},
            {"interleave_pairs", l.interleave_pairs},
            {"feasible", e.feasible},
            {"reason", e.reason}};
  if (e.valid) {
    j["memory_bytes"] = memory_to_json(e.memory);
    j["peak_stage"] = e.peak_stage;
    j["step_time_s"] = e.time.total();
    j["step_time_split_s"] = time_to_json(e.time);
    j["tokens_per_s"] = e.tokens_per_s;
    j["mfu"] = e.mfu;
    j["comm"] = comm_to_json(e.comm);
  } else {
    j["memory_bytes"] = {{"total", nullptr}};
    j["step_time_s"] = nullptr;
    j["tokens_per_s"] = nullptr;
    j["mfu"] = nullptr;
  }
  return j;
}

Plan make_plan(const ModelShape& model, const json& model_config, const std::string& source,
               const Job& job, const Cluster& cluster, const Evaluation& e) {
  Plan plan;
  plan.layout = e.layout;
  plan.job = job;
  plan.model = model;
  plan.model_config = model_config;
  plan.model_source = source;
  plan.cluster = cluster;
  plan.predictions = evaluation_to_json(e);
  return plan;
}

json plan_to_json(const Plan& p) {
  const Layout& l = p.layout;
  return {{"format", kFormat},
          {"version", kVersion},
          {"layout",
           {{"tp", l.tp},
            {"pp", l.pp},
            {"vpp", l.vpp},
            {"ep", l.ep},
            {"etp", l.etp},
            {"dp", l.dp},
            {"zero1", l.zero1},
            {"sequence_parallel", l.sequence_parallel},
            {"interleave_pairs", l.interleave_pairs}}},
          {"world_size", l.world()},
          {"micro_batch", l.micro_batch},
          {"num_micro_batches", l.num_micro_batches},
          {"global_batch", p.job.global_batch},
          {"seq", p.job.seq},
          {"recompute", recompute_name(l.recompute)},
          {"objective", objective_name(p.job.objective)},
          {"precision",
           {{"weight_bytes", p.job.weight_bytes},
            {"grad_bytes", p.job.grad_bytes},
            {"master_bytes", p.job.master_bytes},
            {"optimizer_state_bytes", p.job.optimizer_state_bytes},
            {"activation_bytes", p.job.activation_bytes}}},
          {"model", p.model_config},
          {"model_source", p.model_source},
          {"cluster", cluster_to_json(p.cluster)},
          {"predictions", p.predictions}};
}

Plan plan_from_json(const json& doc) {
  require(doc.is_object(), "plan: expected a JSON object");
  require(doc.value("format", std::string()) == kFormat, "plan: field 'format' must be \"", kFormat,
          "\"");
  require(doc.value("version", 0) == kVersion, "plan: version ", doc.value("version", 0),
          " is not supported (this metamorph reads version ", kVersion, ")");
  Plan p;
  const json& layout = field(doc, "layout", "");
  Layout& l = p.layout;
  l.tp = static_cast<int>(positive(layout, "tp", "layout."));
  l.pp = static_cast<int>(positive(layout, "pp", "layout."));
  l.vpp = static_cast<int>(positive(layout, "vpp", "layout."));
  l.ep = static_cast<int>(positive(layout, "ep", "layout."));
  l.etp = static_cast<int>(positive(layout, "etp", "layout."));
  l.dp = static_cast<int>(positive(layout, "dp", "layout."));
  l.zero1 = boolean(layout, "zero1", "layout.");
  l.sequence_parallel = boolean(layout, "sequence_parallel", "layout.");
  // Plans written before interleaved pairs existed run the micro-batches one at a time.
  l.interleave_pairs =
      layout.contains("interleave_pairs") && boolean(layout, "interleave_pairs", "layout.");
  l.micro_batch = static_cast<int>(positive(doc, "micro_batch", ""));
  l.num_micro_batches = positive(doc, "num_micro_batches", "");
  try {
    l.recompute = parse_recompute(text(doc, "recompute", ""));
    p.job.objective = parse_objective(text(doc, "objective", ""));
  } catch (const InputError& e) {
    throw InputError(concat("plan: ", e.what()));
  }
  if (doc.contains("world_size"))
    require(positive(doc, "world_size", "") == l.world(), "plan: world_size ", doc["world_size"],
            " disagrees with tp x pp x dp = ", l.world());
  p.job.seq = positive(doc, "seq", "");
  p.job.global_batch = positive(doc, "global_batch", "");
  if (doc.contains("precision")) {
    const json& pr = doc["precision"];
    p.job.weight_bytes = static_cast<int>(positive(pr, "weight_bytes", "precision."));
    p.job.grad_bytes = static_cast<int>(positive(pr, "grad_bytes", "precision."));
    p.job.master_bytes = pr.value("master_bytes", 4);
    p.job.optimizer_state_bytes =
        static_cast<int>(positive(pr, "optimizer_state_bytes", "precision."));
    p.job.activation_bytes = static_cast<int>(positive(pr, "activation_bytes", "precision."));
  }
  p.model_config = field(doc, "model", "");
  try {
    p.model = model_shape_from_json(p.model_config);
  } catch (const InputError& e) {
    throw InputError(concat("plan: ", e.what()));
  }
  p.model_source = doc.value("model_source", std::string());
  p.cluster = cluster_from_json(field(doc, "cluster", ""));
  const std::string problem = layout_problem(p.model, p.job, p.cluster, l);
  require(problem.empty(), "plan: the layout cannot run: ", problem);
  p.predictions = doc.value("predictions", json::object());
  return p;
}

void save_plan(const Plan& plan, const std::filesystem::path& path) {
  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary);
    require(out.good(), "--out ", path.string(), ": cannot write ", temporary.string());
    out << plan_to_json(plan).dump(2) << "\n";
    out.close();
    require(out.good(), "--out ", path.string(), ": writing ", temporary.string(), " failed");
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    throw InputError(
        concat("--out ", path.string(), ": cannot rename the finished plan into place"));
  }
}

void require_world_size(const Plan& plan, int ranks) {
  require(plan.world_size() == ranks, "the plan is for ", plan.world_size(), " ranks (tp ",
          plan.layout.tp, " x pp ", plan.layout.pp, " x dp ", plan.layout.dp,
          ") but this job runs on ", ranks, " ranks (mpirun -np); re-plan with --gpus ", ranks);
}

Plan load_plan(const std::filesystem::path& path) {
  std::ifstream in(path);
  require(in.good(), "--plan ", path.string(), ": cannot open the file");
  try {
    return plan_from_json(json::parse(in));
  } catch (const json::parse_error& e) {
    throw InputError(concat("--plan ", path.string(), ": not valid JSON (", e.what(), ")"));
  } catch (const json::type_error& e) {
    throw InputError(
        concat("--plan ", path.string(), ": a field has the wrong type (", e.what(), ")"));
  } catch (const InputError& e) {
    throw InputError(concat("--plan ", path.string(), ": ", e.what()));
  }
}

}  // namespace metamorph::planner

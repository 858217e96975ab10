#include "launch/commands/train_plan.hpp"

#include "runtime/core/error.hpp"

namespace metamorph::cli {

namespace {

namespace po = boost::program_options;

// A flag the user typed (not its default) must agree with the plan.
template <class T>
void agree(const po::variables_map& vm, const char* flag, T planned) {
  if (!vm.count(flag) || vm[flag].defaulted()) return;
  const T given = vm[flag].as<T>();
  require(given == planned, "train: --", flag, " ", given, " disagrees with the plan's ", planned,
          "; drop --", flag, " or re-plan");
}

}  // namespace

void apply_plan(const planner::Plan& plan, const po::variables_map& vm, RunOptions& o) {
  const planner::Layout& l = plan.layout;
  require(l.vpp == 1, "train: the plan uses ", l.vpp,
          " virtual pipeline stages per rank (interleaved 1F1B), which this runtime does not "
          "execute yet; re-plan with --vpp 1");
  require(l.recompute != planner::Recompute::selective,
          "train: the plan uses selective recompute, which this runtime does not execute yet "
          "(it has none and full); re-plan with --recompute none or --recompute full");
  agree<int>(vm, "tp", l.tp);
  agree<int>(vm, "pp", l.pp);
  agree<int>(vm, "dp", l.dp);
  agree<int>(vm, "ep", l.ep);
  agree<int>(vm, "etp", l.etp);
  agree<std::int64_t>(vm, "seq", plan.job.seq);
  agree<std::int64_t>(vm, "micro-batch", l.micro_batch);
  agree<std::int64_t>(vm, "global-batch", plan.job.global_batch);
  agree<std::string>(vm, "objective", planner::objective_name(plan.job.objective));
  if (vm.count("recompute") && !vm["recompute"].defaulted())
    require(vm["recompute"].as<bool>() == (l.recompute == planner::Recompute::full),
            "train: --recompute disagrees with the plan's recompute '",
            planner::recompute_name(l.recompute), "'");
  if (vm.count("interleave-pairs") && vm["interleave-pairs"].as<bool>())
    require(l.interleave_pairs,
            "train: --interleave-pairs disagrees with the plan, which runs the micro-batches one "
            "at a time; drop --interleave-pairs or re-plan with --interleave-pairs");
  o.tp = l.tp;
  o.pp = l.pp;
  o.dp = l.dp;
  o.ep = l.ep;
  // Expert-TP means nothing to a dense model; for an MoE one, 0 is the runtime's "as tp".
  o.etp = !plan.model.is_moe() || l.etp == l.tp ? 0 : l.etp;
  o.zero1 = l.zero1;
  o.interleave_pairs = l.interleave_pairs;
  o.recompute = l.recompute == planner::Recompute::full;
  o.seq = plan.job.seq;
  o.micro_batch = l.micro_batch;
  o.global_batch = plan.job.global_batch;
  o.objective = planner::objective_name(plan.job.objective);
  // The plan carries its model inline: a plan file alone is enough to start a fresh run.
  if (o.model_path.empty() && o.init_path.empty() && o.resume_path.empty())
    o.model_config = plan.model_config;
}

}  // namespace metamorph::cli

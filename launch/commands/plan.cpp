// `metamorph plan`: enumerates parallel layouts for a model on a cluster, prints the best ones
// with their memory and time breakdown, and writes the winner to plan.json.
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "launch/cli/command.hpp"
#include "planner/plan_file.hpp"
#include "planner/presets.hpp"
#include "planner/report.hpp"
#include "planner/search.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cli {

namespace {

// 34.1K, 8.03B: a count as people quote model sizes.
std::string parameter_count_text(double count) {
  const char* suffix[] = {"", "K", "M", "B", "T"};
  int k = 0;
  while (count >= 1000 && k < 4) {
    count /= 1000;
    ++k;
  }
  std::ostringstream out;
  out << std::setprecision(3) << count << suffix[k];
  return out.str();
}

namespace pl = planner;
using nlohmann::json;

po::options_description plan_options() {
  po::options_description o("plan");
  o.add_options()("model", po::value<std::string>(),
                  "model config.json (Hugging Face field names)")(
      "preset", po::value<std::string>(),
      "named model instead of --model (llama3-8b, mixtral-8x7b, ...)")("gpus", po::value<int>(),
                                                                       "number of GPUs")(
      "gpus-per-node", po::value<int>()->default_value(8), "GPUs per node")(
      "gpu", po::value<std::string>()->default_value("h100"),
      "GPU type: h100, h200, a100-40, a100-80, b200")("peak-tflops", po::value<double>(),
                                                      "override the GPU's dense bf16 peak")(
      "gpu-memory-gib", po::value<double>(), "override the GPU memory")(
      "memory-bw-gbs", po::value<double>(), "override the GPU memory bandwidth")(
      "nvlink-gbs", po::value<double>(), "override intra-node bandwidth per GPU per direction")(
      "network-gbs", po::value<double>(), "override inter-node bandwidth per GPU per direction")(
      "calibration", po::value<std::string>(), "calibration.json measured by `metamorph bench`")(
      "seq", po::value<int64_t>(), "sequence length in tokens")(
      "global-batch", po::value<int64_t>(), "sequences per optimizer step")(
      "global-batch-tokens", po::value<int64_t>(),
      "tokens per optimizer step (instead of --global-batch)")(
      "objective", po::value<std::string>()->default_value("ar"),
      "ar or diffusion ([x_t; x_0] doubles the sequence)")(
      "precision", po::value<std::string>()->default_value("bf16"), "bf16 (mixed) or fp32")(
      "accounting", po::value<std::string>()->default_value("megatron"),
      "activation memory accounting: megatron (Korthikanti et al.) or metamorph (the tensors "
      "metamorph's runtime keeps, checked against its arena; then only layouts this runtime "
      "executes: one virtual stage, recompute none or full, no sequence parallelism, expert-TP "
      "= TP under TP)")(
      "moe-routing", po::value<std::string>()->default_value("uniform"),
      "with --accounting metamorph, the MoE routing memory is sized for: uniform (expected) or "
      "worst-case (an upper bound: every row the EP group can send a rank, or its capacity)")(
      "moe-load", po::value<double>()->default_value(1.0),
      "under expert parallelism, the busiest rank's routed rows over its uniform share (>= 1; 1: "
      "balanced routing); scales the expert GEMMs' time of layouts with --ep > 1 and, with "
      "--accounting "
      "metamorph, the rows their activations hold")(
      "gpu-attention", po::value<std::string>()->default_value("cudnn-deterministic"),
      "with --accounting metamorph, the attention backward's scratch on the GPU: "
      "cudnn-deterministic (train's default), cudnn (train --nondeterministic: one f32 dQ "
      "accumulator) or kernels (metamorph's own kernels, METAMORPH_CUDNN=0: none)")(
      "optimizer", po::value<std::string>()->default_value("adamw"), "adamw or sgd")(
      "tp", po::value<int>(), "fix tensor parallel size")(
      "pp", po::value<int>(), "fix pipeline parallel size")("vpp", po::value<int>(),
                                                            "fix virtual pipeline stages")(
      "ep", po::value<int>(), "fix expert parallel size")("etp", po::value<int>(),
                                                          "fix expert tensor parallel size")(
      "dp", po::value<int>(), "fix data parallel size")("micro-batch", po::value<int>(),
                                                        "fix the micro-batch size")(
      "recompute", po::value<std::string>(), "fix recompute: none, selective, full")(
      "no-recompute", po::bool_switch(), "never recompute activations")(
      "zero1", po::bool_switch(), "require ZeRO-1 (sharded optimizer)")(
      "no-zero1", po::bool_switch(), "forbid ZeRO-1")(
      "interleave-pairs", po::bool_switch(),
      "require interleaved micro-batch pairs (train --interleave-pairs: each one's TP all-reduces "
      "hidden behind the other's compute, both micro-batches' activations held; needs TP > 1, "
      "PP 1 and two micro-batches per replica)")("no-interleave-pairs", po::bool_switch(),
                                                 "forbid interleaved micro-batch pairs")(
      "no-sequence-parallel", po::bool_switch(),
      "TP without sequence parallelism (software before Megatron-LM 2022)")(
      "max-tp", po::value<int>()->default_value(0), "largest TP to consider (0: node size)")(
      "max-pp", po::value<int>()->default_value(0), "largest PP to consider (0: no limit)")(
      "headroom", po::value<double>()->default_value(0.05), "fraction of GPU memory to keep free")(
      "top", po::value<int>()->default_value(10), "how many layouts to print")(
      "explain", po::value<std::string>(),
      "full breakdown of one layout, e.g. tp8.pp4.dp2.mb1.sel")(
      "json", po::bool_switch(), "print JSON for scripts")("csv", po::bool_switch(),
                                                           "print CSV for scripts")(
      "all", po::bool_switch(), "with --json/--csv, also list refused layouts and why")(
      "sweep-gpus", po::value<std::string>(), "best layout per GPU count, e.g. 8,16,32,64")(
      "sweep-seq", po::value<std::string>(),
      "best layout per sequence length, e.g. 1024,2048,4096")(
      "out", po::value<std::string>()->default_value("plan.json"), "where to write the best plan")(
      "no-save", po::bool_switch(), "do not write a plan file");
  return o;
}

template <class T>
T required(const po::variables_map& vm, const char* name, const char* what) {
  require(vm.count(name) > 0, "plan: --", name, " is required (", what, ")");
  return vm[name].as<T>();
}

std::vector<int64_t> parse_list(const std::string& option, const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      const long long value = std::stoll(item, &used);
      require(used == item.size() && value > 0, "");
      values.push_back(value);
    } catch (const std::exception&) {
      throw InputError(concat("--", option, " '", text,
                              "': expected positive integers separated by commas, e.g. 8,16,32"));
    }
  }
  require(!values.empty(), "--", option, " is empty; e.g. 8,16,32");
  return values;
}

struct Inputs {
  pl::ModelShape model;
  json model_config;
  std::string model_source;
  pl::Job job;
  pl::Cluster cluster;
  pl::Constraints constraints;
};

Inputs read_inputs(const po::variables_map& vm) {
  Inputs in;
  require(
      vm.count("model") + vm.count("preset") == 1,
      "plan: give exactly one of --model config.json or --preset NAME (presets: ",
      [] {
        std::string names;
        for (const auto& n : pl::preset_names()) names += (names.empty() ? "" : ", ") + n;
        return names;
      }(),
      ")");
  if (vm.count("model")) {
    in.model_source = vm["model"].as<std::string>();
    in.model = pl::load_model_shape(in.model_source);
    in.model_config = pl::load_model_config(in.model_source);
  } else {
    in.model_source = "preset:" + vm["preset"].as<std::string>();
    in.model_config = pl::preset_config(vm["preset"].as<std::string>());
    in.model = pl::model_shape_from_json(in.model_config);
  }

  pl::GpuSpec gpu = pl::gpu_by_name(vm["gpu"].as<std::string>());
  const pl::Calibration calibration =
      vm.count("calibration") ? pl::load_calibration(vm["calibration"].as<std::string>())
                              : pl::Calibration{};
  pl::apply_measured_device(calibration, gpu);
  const auto override_number = [&](const char* name, double& field) {
    if (!vm.count(name)) return;
    const double value = vm[name].as<double>();
    require(value > 0, "--", name, " must be positive, got ", value);
    field = value;
  };
  override_number("peak-tflops", gpu.peak_tflops);
  override_number("gpu-memory-gib", gpu.memory_gib);
  override_number("memory-bw-gbs", gpu.memory_bw_gbs);
  override_number("nvlink-gbs", gpu.nvlink_gbs);
  override_number("network-gbs", gpu.network_gbs);
  in.cluster = pl::make_cluster(required<int>(vm, "gpus", "number of GPUs"),
                                vm["gpus-per-node"].as<int>(), gpu, calibration);

  in.job.seq = required<int64_t>(vm, "seq", "sequence length");
  require(in.job.seq > 0, "--seq must be positive, got ", in.job.seq);
  require(vm.count("global-batch") + vm.count("global-batch-tokens") == 1,
          "plan: give exactly one of --global-batch (sequences) or --global-batch-tokens");
  if (vm.count("global-batch")) {
    in.job.global_batch = vm["global-batch"].as<int64_t>();
  } else {
    const int64_t tokens = vm["global-batch-tokens"].as<int64_t>();
    require(tokens > 0 && tokens % in.job.seq == 0, "--global-batch-tokens ", tokens,
            " must be a positive multiple of --seq ", in.job.seq);
    in.job.global_batch = tokens / in.job.seq;
  }
  require(in.job.global_batch > 0, "--global-batch must be positive, got ", in.job.global_batch);
  in.job.objective = pl::parse_objective(vm["objective"].as<std::string>());
  pl::set_precision(in.job, vm["precision"].as<std::string>());
  const std::string accounting = vm["accounting"].as<std::string>();
  require(accounting == "megatron" || accounting == "metamorph", "--accounting '", accounting,
          "' is not one of megatron, metamorph");
  in.job.accounting = accounting == "metamorph" ? pl::ActivationAccounting::metamorph
                                                : pl::ActivationAccounting::megatron;
  const std::string routing = vm["moe-routing"].as<std::string>();
  require(routing == "uniform" || routing == "worst-case", "--moe-routing '", routing,
          "' is not one of uniform, worst-case");
  in.job.worst_case_routing = routing == "worst-case";
  in.job.expert_load = vm["moe-load"].as<double>();
  require(std::isfinite(in.job.expert_load) && in.job.expert_load >= 1.0, "--moe-load ",
          in.job.expert_load, " must be a finite number >= 1 (1: balanced routing)");
  pl::set_optimizer(in.job, vm["optimizer"].as<std::string>());
  in.job.attention_scratch = pl::parse_attention_scratch(vm["gpu-attention"].as<std::string>());

  pl::Constraints& c = in.constraints;
  const auto fix = [&](const char* name, std::optional<int>& field) {
    if (!vm.count(name)) return;
    const int value = vm[name].as<int>();
    require(value >= 1, "--", name, " must be at least 1, got ", value);
    field = value;
  };
  fix("tp", c.fixed.tp);
  fix("pp", c.fixed.pp);
  fix("vpp", c.fixed.vpp);
  fix("ep", c.fixed.ep);
  fix("etp", c.fixed.etp);
  fix("dp", c.fixed.dp);
  fix("micro-batch", c.fixed.micro_batch);
  if (c.fixed.vpp) c.max_vpp = std::max(c.max_vpp, *c.fixed.vpp);
  if (c.fixed.micro_batch) c.max_micro_batch = std::max(c.max_micro_batch, *c.fixed.micro_batch);
  if (vm.count("recompute"))
    c.fixed.recompute = pl::parse_recompute(vm["recompute"].as<std::string>());
  if (vm["no-recompute"].as<bool>()) {
    // require() evaluates its message eagerly: read --recompute only when it was given.
    if (c.fixed.recompute && *c.fixed.recompute != pl::Recompute::none)
      throw InputError(
          concat("--no-recompute contradicts --recompute ", vm["recompute"].as<std::string>()));
    c.fixed.recompute = pl::Recompute::none;
    c.allow_recompute = false;
  }
  require(!(vm["zero1"].as<bool>() && vm["no-zero1"].as<bool>()),
          "--zero1 and --no-zero1 contradict each other");
  if (vm["zero1"].as<bool>()) c.fixed.zero1 = true;
  if (vm["no-zero1"].as<bool>()) c.fixed.zero1 = false;
  require(!(vm["interleave-pairs"].as<bool>() && vm["no-interleave-pairs"].as<bool>()),
          "--interleave-pairs and --no-interleave-pairs contradict each other");
  if (vm["interleave-pairs"].as<bool>()) c.fixed.interleave_pairs = true;
  if (vm["no-interleave-pairs"].as<bool>()) c.fixed.interleave_pairs = false;
  pl::validate_constraints(c);
  if (vm["no-sequence-parallel"].as<bool>()) c.sequence_parallel = false;
  // Planning for this runtime: only what `train --plan` executes.
  c.runtime_only = in.job.accounting == pl::ActivationAccounting::metamorph;
  if (c.runtime_only) {
    require(!c.fixed.vpp || *c.fixed.vpp == 1, "--vpp ", c.fixed.vpp.value_or(1),
            ": with --accounting metamorph the plan is for this runtime, which executes one "
            "virtual stage (--vpp 1)");
    require(!c.fixed.recompute || *c.fixed.recompute != pl::Recompute::selective,
            "--recompute selective: with --accounting metamorph the plan is for this runtime, "
            "which recomputes none or full");
    require(!c.fixed.tp || !c.fixed.etp || *c.fixed.tp == 1 || *c.fixed.etp == *c.fixed.tp ||
                (*c.fixed.etp == 1 && (!c.fixed.ep || *c.fixed.ep == *c.fixed.tp)),
            "--etp ", c.fixed.etp.value_or(0), " with --tp ", c.fixed.tp.value_or(0),
            ": with --accounting metamorph the plan is for this runtime, whose experts follow "
            "the dense TP split (--etp equal to --tp), are spread whole over the TP group (--etp "
            "1 --ep ",
            c.fixed.tp.value_or(0), "), or need --tp 1");
  }
  c.max_tp = vm["max-tp"].as<int>();
  c.max_pp = vm["max-pp"].as<int>();
  require(c.max_tp >= 0 && c.max_pp >= 0, "--max-tp and --max-pp must be >= 0");
  c.memory_headroom = vm["headroom"].as<double>();
  require(c.memory_headroom >= 0 && c.memory_headroom < 1,
          "--headroom must be a fraction in [0, 1), got ", c.memory_headroom);
  return in;
}

int run_sweep(const po::variables_map& vm, const Inputs& in) {
  const bool by_gpus = vm.count("sweep-gpus") > 0;
  require(!(by_gpus && vm.count("sweep-seq")), "give one of --sweep-gpus or --sweep-seq");
  const auto points = parse_list(by_gpus ? "sweep-gpus" : "sweep-seq",
                                 vm[by_gpus ? "sweep-gpus" : "sweep-seq"].as<std::string>());
  json rows = json::array();
  for (const int64_t point : points) {
    pl::Cluster cluster = in.cluster;
    pl::Job job = in.job;
    if (by_gpus) {
      cluster = pl::make_cluster(static_cast<int>(point), in.cluster.gpus_per_node, in.cluster.gpu,
                                 in.cluster.calibration);
    } else {
      job.seq = point;
    }
    const auto result = pl::search_layouts(in.model, job, cluster, in.constraints);
    json row = {{"gpus", cluster.gpus}, {"seq", job.seq}, {"feasible", !result.ranked.empty()}};
    if (!result.ranked.empty()) {
      const auto& best = result.ranked.front();
      row["best"] = pl::evaluation_to_json(best);
      row["tokens_per_s"] = best.tokens_per_s;
      row["tokens_per_s_per_gpu"] = best.tokens_per_s / cluster.gpus;
      row["mfu"] = best.mfu;
    }
    rows.push_back(row);
  }
  if (vm["json"].as<bool>()) {
    std::cout << json{{"sweep", by_gpus ? "gpus" : "seq"}, {"points", rows}}.dump(2) << "\n";
  } else {
    std::cout << (by_gpus ? "gpus" : "seq") << ",layout,tokens_per_s,tokens_per_s_per_gpu,mfu\n";
    for (const auto& r : rows)
      std::cout << (by_gpus ? r["gpus"] : r["seq"]) << ","
                << (r["feasible"].get<bool>() ? r["best"]["layout"].get<std::string>() : "none")
                << "," << r.value("tokens_per_s", 0.0) << ","
                << r.value("tokens_per_s_per_gpu", 0.0) << "," << r.value("mfu", 0.0) << "\n";
  }
  return 0;
}

int run_plan(const po::variables_map& vm) {
  const Inputs in = read_inputs(vm);
  const bool as_json = vm["json"].as<bool>();
  const bool as_csv = vm["csv"].as<bool>();
  require(!(as_json && as_csv), "give one of --json or --csv");
  const int top = vm["top"].as<int>();
  require(top >= 1, "--top must be at least 1, got ", top);
  if (vm.count("sweep-gpus") || vm.count("sweep-seq")) return run_sweep(vm, in);

  const auto started = std::chrono::steady_clock::now();
  const pl::SearchResult result = pl::search_layouts(in.model, in.job, in.cluster, in.constraints);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  if (vm.count("explain")) {
    const pl::LayoutFilter wanted = pl::parse_layout_filter(vm["explain"].as<std::string>());
    const pl::Evaluation* found = nullptr;
    for (const auto& e : result.ranked)
      if (wanted.matches(e.layout)) {
        found = &e;
        break;
      }
    for (const auto& e : result.refused)
      if (found == nullptr && wanted.matches(e.layout)) found = &e;
    require(found != nullptr, "--explain ", vm["explain"].as<std::string>(),
            ": no such layout among the ", result.candidates(), " candidates for ", in.cluster.gpus,
            " GPUs (tp x pp x dp must equal --gpus)");
    if (as_json) {
      std::cout << pl::evaluation_to_json(*found).dump(2) << "\n";
    } else {
      pl::print_breakdown(std::cout, *found, in.cluster);
    }
    return 0;
  }

  if (result.ranked.empty())
    throw InputError(pl::no_fit_advice(in.model, in.job, in.cluster, in.constraints, result));

  const bool all = vm["all"].as<bool>();
  if (as_json) {
    json candidates = json::array();
    for (size_t i = 0; i < std::min<size_t>(top, result.ranked.size()); ++i)
      candidates.push_back(pl::evaluation_to_json(result.ranked[i]));
    if (all)
      for (const auto& e : result.refused) candidates.push_back(pl::evaluation_to_json(e));
    std::cout << json{{"candidates", candidates},
                      {"searched", result.candidates()},
                      {"feasible", result.ranked.size()},
                      {"search_seconds", seconds}}
                     .dump(2)
              << "\n";
  } else if (as_csv) {
    pl::print_csv(std::cout, result, static_cast<size_t>(top), all);
  } else {
    const auto params = pl::count_parameters(in.model);
    std::cout << in.model_source << ": " << parameter_count_text(params.total) << " parameters ("
              << parameter_count_text(params.active) << " active), " << in.cluster.gpus << " x "
              << in.cluster.gpu.name << ", seq " << in.job.seq << ", global batch "
              << in.job.global_batch << " (" << pl::objective_name(in.job.objective) << ")\n";
    std::cout << pl::refusal_summary(result) << "; searched in " << seconds * 1e3 << " ms\n\n";
    pl::print_table(std::cout, result, static_cast<size_t>(top));
    std::cout << "\n" << pl::explain_winner(result, in.cluster);
  }
  if (!vm["no-save"].as<bool>()) {
    const std::string out = vm["out"].as<std::string>();
    pl::save_plan(pl::make_plan(in.model, in.model_config, in.model_source, in.job, in.cluster,
                                result.ranked.front()),
                  out);
    if (!as_json && !as_csv) std::cout << "wrote " << out << "\n";
  }
  return 0;
}

}  // namespace

Command plan_command() {
  return {
      "plan",
      "rank parallel layouts (TP/PP/EP/DP, micro-batch, recompute, ZeRO-1, interleaved pairs) by "
      "predicted throughput",
      plan_options,
      {},
      run_plan};
}

}  // namespace metamorph::cli

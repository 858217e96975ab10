#include "planner/cluster.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <limits>
#include <utility>

#include "runtime/core/error.hpp"

namespace metamorph::planner {

namespace {

using nlohmann::json;

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

double number_field(const json& doc, const char* key, double fallback, const char* where) {
  if (!doc.contains(key)) return fallback;
  require(doc[key].is_number() && doc[key].get<double>() > 0, where, ": field '", key,
          "' must be a positive number, got ", doc[key].dump());
  return doc[key].get<double>();
}

const char* op_name(Collective op) {
  switch (op) {
    case Collective::all_reduce:
      return "all_reduce";
    case Collective::all_gather:
      return "all_gather";
    case Collective::reduce_scatter:
      return "reduce_scatter";
    case Collective::all_to_all:
      return "all_to_all";
    case Collective::p2p:
      return "p2p";
  }
  return "";
}

// Bytes each rank moves over its link for a message of `bytes`, ring algorithms.
double wire_fraction(Collective op, int group) {
  const double n = group;
  switch (op) {
    case Collective::all_reduce:
      return 2.0 * (n - 1) / n;
    case Collective::all_gather:
    case Collective::reduce_scatter:
    case Collective::all_to_all:
      return (n - 1) / n;
    case Collective::p2p:
      return 1.0;
  }
  return 1.0;
}

}  // namespace

const std::vector<GpuSpec>& known_gpus() {
  // Dense bf16 peak, memory, HBM bandwidth, NVLink per direction, one NIC per GPU
  // (A100: HDR 200 Gb/s, H100/H200/B200: NDR 400 Gb/s).
  // Efficiencies: A100 fitted to the Megatron-LM papers' runs, H100 to Megatron-Core's Mixtral
  // figure and the attention speed measured here (docs/planner.md); H200 and B200 assume H100's.
  static const std::vector<GpuSpec> table = {
      {"h100", 989, 80, 3350, 450, 50, 0.61, 0.78},
      {"h200", 989, 141, 4800, 450, 50, 0.61, 0.78},
      {"a100-40", 312, 40, 1555, 300, 25, 0.72, 0.30},
      {"a100-80", 312, 80, 2039, 300, 25, 0.72, 0.30},
      {"b200", 2250, 180, 8000, 900, 50, 0.61, 0.78},
  };
  return table;
}

GpuSpec gpu_by_name(const std::string& name) {
  const std::string wanted = lower(name);
  for (const auto& gpu : known_gpus())
    if (gpu.name == wanted) return gpu;
  std::string valid;
  for (const auto& gpu : known_gpus()) valid += (valid.empty() ? "" : ", ") + gpu.name;
  throw InputError(concat("--gpu '", name, "' is not a known GPU; known GPUs: ", valid,
                          " (or override --peak-tflops/--gpu-memory-gib with a known one)"));
}

Calibration calibration_from_json(const json& doc) {
  const char* where = "calibration";
  require(doc.is_object(), where, ": expected a JSON object");
  Calibration c;
  // 0 keeps the GPU table's efficiency.
  const auto fraction = [&](const char* key) {
    if (!doc.contains(key)) return 0.0;
    require(doc[key].is_number() && doc[key].get<double>() >= 0 && doc[key].get<double>() <= 1,
            where, ": field '", key, "' must be a fraction of peak in [0, 1], got ",
            doc[key].dump());
    return doc[key].get<double>();
  };
  c.gemm_efficiency = fraction("gemm_efficiency");
  c.gemm_half_dim = number_field(doc, "gemm_half_dim", c.gemm_half_dim, where);
  c.attention_efficiency = fraction("attention_efficiency");
  c.elementwise_passes = number_field(doc, "elementwise_passes", c.elementwise_passes, where);
  c.nvlink_efficiency = number_field(doc, "nvlink_efficiency", c.nvlink_efficiency, where);
  c.network_efficiency = number_field(doc, "network_efficiency", c.network_efficiency, where);
  c.collective_latency_s = number_field(doc, "collective_latency_s", c.collective_latency_s, where);
  c.workspace_gib = number_field(doc, "workspace_gib", c.workspace_gib, where);
  for (auto [key, field] :
       {std::pair{"grad_reduce_overlap", &Calibration::grad_reduce_overlap},
        std::pair{"tp_backward_overlap", &Calibration::tp_backward_overlap},
        std::pair{"tp_overlap_interference", &Calibration::tp_overlap_interference}}) {
    if (!doc.contains(key)) continue;
    require(doc[key].is_number() && doc[key].get<double>() >= 0 && doc[key].get<double>() <= 1,
            where, ": '", key, "' must be a fraction in [0, 1]");
    c.*field = doc[key].get<double>();
  }
  require(c.gemm_efficiency <= 1 && c.attention_efficiency <= 1 && c.nvlink_efficiency <= 1 &&
              c.network_efficiency <= 1,
          where, ": efficiencies are fractions of peak and must be in (0, 1]");
  if (doc.contains("gemm")) {
    require(doc["gemm"].is_array(), where, ": 'gemm' must be a list of {m, n, k, tflops}");
    for (const auto& g : doc["gemm"]) {
      require(g.is_object(), where, ": each 'gemm' entry must be an object {m, n, k, tflops}");
      c.gemms.push_back({number_field(g, "m", 0, where), number_field(g, "n", 0, where),
                         number_field(g, "k", 0, where), number_field(g, "tflops", 0, where),
                         number_field(g, "groups", 1, where)});
      const GemmSample& sample = c.gemms.back();
      require(sample.tflops > 0 && sample.m > 0 && sample.n > 0 && sample.k > 0, where,
              ": 'gemm' entries need positive m, n, k and tflops");
      require(sample.groups >= 1, where, ": a 'gemm' entry's groups must be at least 1, got ",
              sample.groups);
    }
  }
  if (doc.contains("collectives")) {
    require(doc["collectives"].is_array(), where,
            ": 'collectives' must be a list of {op, group, intra_node, bytes, seconds}");
    for (const auto& s : doc["collectives"]) {
      require(s.is_object() && s.contains("op") && s["op"].is_string(), where,
              ": each 'collectives' entry needs an 'op' string");
      CollectiveSample sample;
      sample.op = s["op"].get<std::string>();
      const std::vector<std::string> ops = {"all_reduce", "all_gather", "reduce_scatter",
                                            "all_to_all", "p2p"};
      require(std::find(ops.begin(), ops.end(), sample.op) != ops.end(), where, ": op '", sample.op,
              "' is not one of all_reduce, all_gather, reduce_scatter, all_to_all, p2p");
      sample.group = static_cast<int>(number_field(s, "group", 2, where));
      sample.intra_node = s.value("intra_node", true);
      sample.bytes = number_field(s, "bytes", 0, where);
      sample.seconds = number_field(s, "seconds", 0, where);
      require(sample.bytes > 0 && sample.seconds > 0, where,
              ": 'collectives' entries need positive bytes and seconds");
      c.collectives.push_back(sample);
    }
  }
  if (doc.contains("measured_device")) {
    const json& d = doc["measured_device"];
    require(d.is_object(), where,
            ": 'measured_device' must be an object {name, peak_tflops, memory_bw_gbs}");
    c.device = d.value("name", std::string());
    c.peak_tflops = number_field(d, "peak_tflops", 0, where);
    c.memory_bw_gbs = number_field(d, "memory_bw_gbs", 0, where);
    require(c.peak_tflops >= 0 && c.memory_bw_gbs >= 0, where,
            ": 'measured_device' numbers must be >= 0");
  }
  return c;
}

void apply_measured_device(const Calibration& c, GpuSpec& gpu) {
  if (!c.device.empty()) gpu.name = c.device;
  if (c.peak_tflops > 0) gpu.peak_tflops = c.peak_tflops;
  if (c.memory_bw_gbs > 0) gpu.memory_bw_gbs = c.memory_bw_gbs;
}

json calibration_to_json(const Calibration& c) {
  json doc = {{"format", "metamorph-calibration"},
              {"version", 1},
              {"gemm_efficiency", c.gemm_efficiency},
              {"gemm_half_dim", c.gemm_half_dim},
              {"attention_efficiency", c.attention_efficiency},
              {"elementwise_passes", c.elementwise_passes},
              {"nvlink_efficiency", c.nvlink_efficiency},
              {"network_efficiency", c.network_efficiency},
              {"collective_latency_s", c.collective_latency_s},
              {"workspace_gib", c.workspace_gib},
              {"grad_reduce_overlap", c.grad_reduce_overlap},
              {"tp_backward_overlap", c.tp_backward_overlap},
              {"tp_overlap_interference", c.tp_overlap_interference},
              {"gemm", json::array()},
              {"collectives", json::array()}};
  for (const auto& g : c.gemms) {
    json sample = {{"m", g.m}, {"n", g.n}, {"k", g.k}, {"tflops", g.tflops}};
    if (g.groups != 1) sample["groups"] = g.groups;
    doc["gemm"].push_back(sample);
  }
  for (const auto& s : c.collectives)
    doc["collectives"].push_back({{"op", s.op},
                                  {"group", s.group},
                                  {"intra_node", s.intra_node},
                                  {"bytes", s.bytes},
                                  {"seconds", s.seconds}});
  if (!c.device.empty() || c.peak_tflops > 0)
    doc["measured_device"] = {
        {"name", c.device}, {"peak_tflops", c.peak_tflops}, {"memory_bw_gbs", c.memory_bw_gbs}};
  return doc;
}

Calibration load_calibration(const std::filesystem::path& path) {
  std::ifstream in(path);
  require(in.good(), "--calibration ", path.string(), ": cannot open the file");
  try {
    return calibration_from_json(json::parse(in));
  } catch (const json::parse_error& e) {
    throw InputError(concat("--calibration ", path.string(), ": not valid JSON (", e.what(), ")"));
  } catch (const InputError& e) {
    throw InputError(concat("--calibration ", path.string(), ": ", e.what()));
  }
}

double gemm_efficiency(const Calibration& c, const GpuSpec& gpu, double m, double n, double k,
                       double groups) {
  if (!c.gemms.empty()) {
    // Nearest measured shape and group count in log space.
    double best = std::numeric_limits<double>::max();
    double tflops = 0;
    for (const auto& g : c.gemms) {
      const double d = std::pow(std::log(g.m / m), 2) + std::pow(std::log(g.n / n), 2) +
                       std::pow(std::log(g.k / k), 2) + std::pow(std::log(g.groups / groups), 2);
      if (d < best) {
        best = d;
        tflops = g.tflops;
      }
    }
    return std::min(1.0, tflops / gpu.peak_tflops);
  }
  const double smallest = std::min({m, n, k});
  const double large = c.gemm_efficiency > 0 ? c.gemm_efficiency : gpu.gemm_efficiency;
  return large * smallest / (smallest + c.gemm_half_dim);
}

Cluster make_cluster(int gpus, int gpus_per_node, const GpuSpec& gpu,
                     const Calibration& calibration) {
  require(gpus > 0, "--gpus must be at least 1, got ", gpus);
  require(gpus_per_node > 0, "--gpus-per-node must be at least 1, got ", gpus_per_node);
  require(gpus <= gpus_per_node || gpus % gpus_per_node == 0, "--gpus ", gpus,
          " is not a whole number of nodes of --gpus-per-node ", gpus_per_node,
          "; use a multiple of ", gpus_per_node, " (e.g. ",
          (gpus / gpus_per_node + 1) * gpus_per_node, ")");
  require(gpu.peak_tflops > 0 && gpu.memory_gib > 0 && gpu.memory_bw_gbs > 0 &&
              gpu.nvlink_gbs > 0 && gpu.network_gbs > 0,
          "GPU '", gpu.name, "': peak, memory, bandwidths must all be positive");
  Cluster cluster;
  cluster.gpus = gpus;
  cluster.gpus_per_node = std::min(gpus, gpus_per_node);
  cluster.gpu = gpu;
  cluster.calibration = calibration;
  return cluster;
}

json cluster_to_json(const Cluster& c) {
  return {{"gpus", c.gpus},
          {"gpus_per_node", c.gpus_per_node},
          {"gpu",
           {{"name", c.gpu.name},
            {"peak_tflops", c.gpu.peak_tflops},
            {"memory_gib", c.gpu.memory_gib},
            {"memory_bw_gbs", c.gpu.memory_bw_gbs},
            {"nvlink_gbs", c.gpu.nvlink_gbs},
            {"network_gbs", c.gpu.network_gbs},
            {"gemm_efficiency", c.gpu.gemm_efficiency},
            {"attention_efficiency", c.gpu.attention_efficiency}}},
          {"calibration", calibration_to_json(c.calibration)}};
}

Cluster cluster_from_json(const json& doc) {
  require(doc.is_object() && doc.contains("gpu") && doc["gpu"].is_object(),
          "plan: 'cluster' must be an object with 'gpus', 'gpus_per_node' and 'gpu'");
  const json& g = doc["gpu"];
  GpuSpec gpu;
  gpu.name = g.value("name", std::string("custom"));
  const char* where = "plan cluster.gpu";
  gpu.peak_tflops = number_field(g, "peak_tflops", 0, where);
  gpu.memory_gib = number_field(g, "memory_gib", 0, where);
  gpu.memory_bw_gbs = number_field(g, "memory_bw_gbs", 0, where);
  gpu.nvlink_gbs = number_field(g, "nvlink_gbs", 0, where);
  gpu.network_gbs = number_field(g, "network_gbs", 0, where);
  gpu.gemm_efficiency = number_field(g, "gemm_efficiency", gpu.gemm_efficiency, where);
  gpu.attention_efficiency =
      number_field(g, "attention_efficiency", gpu.attention_efficiency, where);
  const Calibration calibration =
      doc.contains("calibration") ? calibration_from_json(doc["calibration"]) : Calibration{};
  return make_cluster(static_cast<int>(number_field(doc, "gpus", 0, "plan cluster")),
                      static_cast<int>(number_field(doc, "gpus_per_node", 0, "plan cluster")), gpu,
                      calibration);
}

double collective_seconds(const Cluster& cluster, Collective op, double bytes, int group,
                          int ranks_span) {
  if (group <= 1 || bytes <= 0) return 0;
  const bool intra = ranks_span <= cluster.gpus_per_node;
  const Calibration& c = cluster.calibration;
  double bandwidth = intra ? cluster.gpu.nvlink_gbs * 1e9 * c.nvlink_efficiency
                           : cluster.gpu.network_gbs * 1e9 * c.network_efficiency;
  double latency = c.collective_latency_s;
  // Measured samples of this op and locality replace the defaults: bandwidth from the largest
  // message, latency from the smallest.
  const CollectiveSample* largest = nullptr;
  const CollectiveSample* smallest = nullptr;
  for (const auto& s : c.collectives) {
    if (s.op != op_name(op) || s.intra_node != intra) continue;
    if (largest == nullptr || s.bytes > largest->bytes) largest = &s;
    if (smallest == nullptr || s.bytes < smallest->bytes) smallest = &s;
  }
  if (largest != nullptr) {
    bandwidth = largest->bytes * wire_fraction(op, largest->group) / largest->seconds;
    latency = smallest->seconds - smallest->bytes * wire_fraction(op, smallest->group) / bandwidth;
    latency = std::max(latency, 0.0);
  }
  // An all-to-all across nodes sends only the share of its peers off-node through the NIC.
  double wire = bytes * wire_fraction(op, group);
  if (!intra && op == Collective::all_to_all) {
    const double off_node = 1.0 - static_cast<double>(cluster.gpus_per_node) / ranks_span;
    wire = bytes * std::max(off_node, 0.0);
  }
  // The default latency grows with the algorithm's steps; a measured one already includes them.
  const double steps =
      largest != nullptr || op == Collective::p2p ? 1.0 : std::log2(static_cast<double>(group)) + 1;
  // A ring collective across nodes whose group has m members on each node (evenly strided over
  // `ranks_span`) runs hierarchically, as NCCL does: over NVLink within the node, then across
  // nodes with each member carrying 1/m of the message through its own NIC; the node's m NICs
  // work in parallel. (Measured samples describe their own group and are taken as they are.)
  const bool ring = op == Collective::all_reduce || op == Collective::all_gather ||
                    op == Collective::reduce_scatter;
  const int stride = std::max(1, ranks_span / group);
  const int per_node = std::clamp(cluster.gpus_per_node / stride, 1, group);
  if (!intra && ring && largest == nullptr && per_node > 1 && group % per_node == 0) {
    const double nvlink = cluster.gpu.nvlink_gbs * 1e9 * c.nvlink_efficiency;
    return latency * steps + bytes * wire_fraction(op, per_node) / nvlink +
           bytes / per_node * wire_fraction(op, group / per_node) / bandwidth;
  }
  return latency * steps + wire / bandwidth;
}

}  // namespace metamorph::planner

#pragma once
// The machine a plan runs on: GPU type (a built-in table, every number overridable), node
// shape, and the calibration that turns peak numbers into achievable ones.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace metamorph::planner {

struct GpuSpec {
  std::string name;
  double peak_tflops = 0;    // dense bf16 tensor-core peak
  double memory_gib = 0;     // device memory
  double memory_bw_gbs = 0;  // device memory bandwidth, GB/s
  double nvlink_gbs = 0;     // intra-node bandwidth per GPU per direction, GB/s
  double network_gbs = 0;    // inter-node bandwidth per GPU per direction, GB/s
  // Achievable fractions of peak: large bf16 GEMMs and attention (fitted, docs/planner.md).
  double gemm_efficiency = 0.8;
  double attention_efficiency = 0.5;
};

// h100, h200, a100-40, a100-80, b200.
const std::vector<GpuSpec>& known_gpus();
// Case-insensitive; throws InputError listing the known names.
GpuSpec gpu_by_name(const std::string& name);

// A measured collective: `metamorph bench` writes these; the planner fits bandwidth and latency
// per (op, inside one node or across nodes).
struct CollectiveSample {
  std::string op;  // all_reduce, all_to_all, p2p, all_gather, reduce_scatter
  int group = 2;
  bool intra_node = true;
  double bytes = 0;
  double seconds = 0;
};

struct GemmSample {
  double m = 0, n = 0, k = 0;
  double tflops = 0;
  // An MoE layer's experts: `groups` GEMMs of m x n x k each, forward, input and weight gradients
  // as the runtime runs them (Backend::grouped_matmul and its weight gradients); 1: one GEMM.
  double groups = 1;
};

// How far real kernels and collectives fall short of the peaks. Defaults are fitted to the
// Megatron-LM papers' published runs (docs/planner.md); `metamorph bench` measures them.
struct Calibration {
  // Fractions of peak; 0 means the GPU table's value.
  double gemm_efficiency = 0;       // large GEMMs
  double attention_efficiency = 0;  // score/value matmuls, flash or not
  double gemm_half_dim = 32;        // efficiency falls as dim/(dim + half) for small dims
  double elementwise_passes = 6.0;  // memory passes over each saved activation byte
  double nvlink_efficiency = 0.75;  // achieved bus bandwidth / link bandwidth
  double network_efficiency = 0.80;
  double collective_latency_s = 20e-6;
  // Share of the last backward (and first forward) that hides gradient reduction (parameter
  // all-gather); 0 for frameworks that reduce after the backward, like Megatron-LM in 2021.
  double grad_reduce_overlap = 1.0;
  // Share of the weight-gradient GEMMs' time that hides the backward's TP all-reduces (started
  // before those GEMMs, waited for after them); 0 for frameworks that sum each input gradient
  // before computing the weight gradients, like Megatron-LM in 2021.
  double tp_backward_overlap = 1.0;
  // Share of the TP all-reduce time that interleaved pairs hide behind the other micro-batch's
  // compute which still costs (0: overlapped communication is free; 1: it costs what it did
  // exposed). NCCL's kernels take SMs and memory bandwidth from the compute they overlap, and the
  // all-reduces priced from the calibration's synchronised single calls are longer than the
  // stream-ordered ones of a training step: fitted (least squares) to the gains `train
  // --interleave-pairs` measured for llama-1b on 2 x H200 at micro-batch 2, 4 and 8 (1.8-2.7% of
  // the step, docs/planner.md "Interleaved pairs"). The weight-gradient overlap above keeps its
  // own calibration (tp_backward_overlap) and is not scaled by this.
  double tp_overlap_interference = 0.88;
  double workspace_gib = 1.5;  // CUDA context, cuBLAS/NCCL workspaces, fragmentation
  std::vector<GemmSample> gemms;
  std::vector<CollectiveSample> collectives;
  // The measured device (`metamorph bench calibrate`): 0 / empty keeps --gpu's table.
  std::string device;
  double peak_tflops = 0;    // the fastest GEMM measured
  double memory_bw_gbs = 0;  // a large copy, read + write
};
// The calibration's measured device numbers over the table's (the command line still wins).
void apply_measured_device(const Calibration& calibration, GpuSpec& gpu);

Calibration calibration_from_json(const nlohmann::json& doc);
nlohmann::json calibration_to_json(const Calibration& calibration);
Calibration load_calibration(const std::filesystem::path& path);

// Achieved fraction of peak for an m x n x k GEMM (`groups` of them at once: an MoE layer's
// local experts): nearest measured shape and group count when the calibration has samples, else
// the fitted curve.
double gemm_efficiency(const Calibration& calibration, const GpuSpec& gpu, double m, double n,
                       double k, double groups = 1);

struct Cluster {
  int gpus = 0;
  int gpus_per_node = 8;
  GpuSpec gpu;
  Calibration calibration;
  int nodes() const { return gpus / gpus_per_node; }
};

// Validates the shape: at least one GPU, a whole number of nodes.
Cluster make_cluster(int gpus, int gpus_per_node, const GpuSpec& gpu,
                     const Calibration& calibration = {});
nlohmann::json cluster_to_json(const Cluster& cluster);
Cluster cluster_from_json(const nlohmann::json& doc);

// Seconds for one collective of `bytes` (message size) over `group` ranks that span
// `ranks_span` consecutive ranks (so it stays on NVLink when that fits in a node).
enum class Collective { all_reduce, all_gather, reduce_scatter, all_to_all, p2p };
double collective_seconds(const Cluster& cluster, Collective op, double bytes, int group,
                          int ranks_span);

}  // namespace metamorph::planner

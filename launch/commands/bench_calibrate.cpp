#include "launch/commands/bench_calibrate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "models/model_config.hpp"
#include "parallel/mpi_communicator.hpp"
#include "parallel/mpi_session.hpp"
#include "planner/cluster.hpp"
#include "runtime/core/attention_mask.hpp"
#include "runtime/core/error.hpp"
#include "runtime/train/compute_device.hpp"

namespace metamorph::cli {

namespace {

namespace po = boost::program_options;

// Median seconds of `repeats` calls after one warm-up; under MPI the slowest rank's median.
double median_seconds(int repeats, const std::function<void()>& op, MPI_Comm comm) {
  op();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    if (comm != MPI_COMM_NULL) MPI_Barrier(comm);
    const auto start = std::chrono::steady_clock::now();
    op();
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  double median = times[times.size() / 2];
  if (comm != MPI_COMM_NULL) MPI_Allreduce(MPI_IN_PLACE, &median, 1, MPI_DOUBLE, MPI_MAX, comm);
  return median;
}

// The GEMMs of one training step of `config` (tokens x out x in, per projection); an MoE's
// experts at the rows each gets from balanced routing (tokens x top-k / experts), which the
// planner would otherwise price at the nearest square.
void add_model_gemms(const ModelConfig& config, std::int64_t tokens,
                     std::vector<planner::GemmSample>& shapes) {
  const auto t = static_cast<double>(tokens), h = static_cast<double>(config.hidden_size);
  for (std::int64_t out :
       {config.q_size(), config.kv_size(), config.intermediate_size, config.vocab_size})
    shapes.push_back({t, static_cast<double>(out), h, 0});
  shapes.push_back({t, h, static_cast<double>(config.intermediate_size), 0});
  if (!config.moe.enabled()) return;
  const double rows = std::max(
      1.0, t * static_cast<double>(config.moe.top_k) / static_cast<double>(config.moe.num_experts));
  const double f = static_cast<double>(config.moe.expert_intermediate_size > 0
                                           ? config.moe.expert_intermediate_size
                                           : config.intermediate_size);
  shapes.push_back({rows, f, h, 0});
  shapes.push_back({rows, h, f, 0});
}

// Squares up to `largest`, then the GEMMs of every model given.
std::vector<planner::GemmSample> gemm_shapes(const std::vector<ModelConfig>& configs,
                                             std::int64_t tokens, std::int64_t largest) {
  std::vector<planner::GemmSample> shapes;
  for (std::int64_t n = 128; n <= largest; n *= 2)
    shapes.push_back({static_cast<double>(n), static_cast<double>(n), static_cast<double>(n), 0});
  for (const ModelConfig& config : configs) add_model_gemms(config, tokens, shapes);
  return shapes;
}

}  // namespace

int bench_calibrate(const po::variables_map& vm) {
  require(vm.count("out"), "bench calibrate: --out calibration.json is required");
  const int repeats = vm["repeats"].as<int>();
  const auto largest = vm["largest"].as<std::int64_t>();
  require(repeats >= 1, "bench calibrate: --repeats must be >= 1, got ", repeats);
  require(largest >= 128, "bench calibrate: --largest must be >= 128, got ", largest);
  const Device device = parse_device(vm["device"].as<std::string>());
  std::optional<ModelConfig> config;
  if (vm.count("model")) config = load_model_config(vm["model"].as<std::string>());
  // The GEMMs of --model and of every --gemm-model; attention is --model's alone.
  std::vector<ModelConfig> gemm_models;
  if (config) gemm_models.push_back(*config);
  if (vm.count("gemm-model"))
    for (const std::string& path : vm["gemm-model"].as<std::vector<std::string>>())
      gemm_models.push_back(load_model_config(path));
  const std::int64_t micro_batch = vm["micro-batch"].as<std::int64_t>();
  const std::int64_t seq = vm["seq"].as<std::int64_t>();
  const std::int64_t tokens = seq * micro_batch;

  const char* launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  std::optional<MpiSession> mpi;
  std::unique_ptr<Communicator> world;
  if (launched != nullptr && std::atoi(launched) > 1) {
    mpi.emplace(nullptr, nullptr);
    world = MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions::from_environment());
  }
  const MPI_Comm comm = world ? MPI_COMM_WORLD : MPI_COMM_NULL;
  const int rank = world ? world->rank() : 0;

  // The backend under test: the CPU, or this rank's GPU (bf16, as training runs there), whose
  // collectives then go over NCCL.
  ComputeDevice compute = make_compute_device(device, node_local_rank());
  Backend& dev = *compute.backend;
  world = device_world(std::move(world), device);
  const DType dtype = dev.activation_dtype();
  const double element = static_cast<double>(dtype_size(dtype));
  // Every timed call ends when the device has finished it.
  auto timed = [&](const std::function<void()>& op) {
    return median_seconds(
        repeats,
        [&] {
          op();
          dev.synchronize();
        },
        comm);
  };
  planner::Calibration c;
  c.device = device == Device::cpu ? "cpu" : "cuda";
  for (planner::GemmSample g : gemm_shapes(gemm_models, tokens, largest)) {
    const auto m = static_cast<std::int64_t>(g.m), n = static_cast<std::int64_t>(g.n),
               k = static_cast<std::int64_t>(g.k);
    Tensor a = dev.zeros({m, k}, dtype), b = dev.zeros({n, k}, dtype),
           out = dev.empty({m, n}, dtype);
    const double s = timed([&] { dev.matmul(a, false, b, true, out); });
    g.tflops = 2.0 * g.m * g.n * g.k / s / 1e12;
    c.gemms.push_back(g);
    c.peak_tflops = std::max(c.peak_tflops, g.tflops);
  }
  {
    const std::int64_t n = device == Device::cpu ? 16 << 20 : 256 << 20;  // beyond the caches
    Tensor a = dev.zeros({n}, dtype), b = dev.empty({n}, dtype);
    const double s = timed([&] { dev.copy(a, b); });
    c.memory_bw_gbs = 2.0 * element * static_cast<double>(n) / s / 1e9;  // read + write
  }
  if (config) {
    // Causal attention at the model's shape, forward and backward, as a fraction of the fastest
    // GEMM, in the planner's count (4 s q FLOPs per token forward, backward twice that).
    const std::int64_t heads = config->num_heads, kv = config->num_kv_heads, d = config->head_dim;
    Tensor q = dev.zeros({micro_batch, seq, heads, d}, dtype);
    Tensor kt = dev.zeros({micro_batch, seq, kv, d}, dtype),
           v = dev.zeros({micro_batch, seq, kv, d}, dtype);
    Tensor out = dev.empty(q.shape(), dtype), lse = dev.empty({micro_batch, heads, seq});
    Tensor dq = dev.empty(q.shape(), dtype), dk = dev.empty(kt.shape(), dtype),
           dv = dev.empty(v.shape(), dtype), dout = dev.zeros(q.shape(), dtype);
    const AttentionMask mask{};
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const double s = timed([&] {
      dev.attention_forward(q, kt, v, mask, scale, out, lse);
      dev.attention_backward(dout, q, kt, v, out, lse, mask, scale, dq, dk, dv);
    });
    const double flops = 3.0 * 4.0 * static_cast<double>(seq) * static_cast<double>(heads * d) *
                         static_cast<double>(tokens);
    c.attention_efficiency = flops / s / (c.peak_tflops * 1e12);
  }
  if (world) {
    const int p = world->size();
    const std::vector<std::int64_t> sizes =
        device == Device::cpu
            ? std::vector<std::int64_t>{std::int64_t{64} << 10, std::int64_t{1} << 20,
                                        std::int64_t{16} << 20}
            : std::vector<std::int64_t>{std::int64_t{1} << 20, std::int64_t{16} << 20,
                                        std::int64_t{64} << 20, std::int64_t{256} << 20};
    for (std::int64_t bytes : sizes) {
      const std::int64_t n = bytes / static_cast<std::int64_t>(element) / p * p;
      Tensor x = dev.zeros({n}, dtype), y = dev.zeros({n}, dtype), part = dev.zeros({n / p}, dtype);
      const double total = element * static_cast<double>(n);
      const auto sample = [&](const char* op, const std::function<void()>& run) {
        c.collectives.push_back({op, p, true, total, timed(run)});
      };
      sample("all_reduce", [&] { world->all_reduce(x); });
      sample("all_gather", [&] { world->all_gather(part, x); });
      sample("reduce_scatter", [&] { world->reduce_scatter(x, part); });
      sample("all_to_all", [&] { world->all_to_all(x, y); });
      // Ranks 0 and 1 exchange (the others wait at the barrier of the next sample).
      c.collectives.push_back({"p2p", 2, true, total, timed([&] {
                                 if (rank == 0) world->send(x, 1);
                                 if (rank == 1) world->recv(y, 0);
                               })});
    }
  }
  if (rank == 0) {
    std::ofstream out(vm["out"].as<std::string>());
    require(out.good(), "bench calibrate: cannot write ", vm["out"].as<std::string>());
    out << planner::calibration_to_json(c).dump(2) << "\n";
    std::cout << "wrote " << vm["out"].as<std::string>() << ": " << c.gemms.size()
              << " GEMM shapes (best " << c.peak_tflops * 1e3 << " GFLOP/s), copy "
              << c.memory_bw_gbs << " GB/s, " << c.collectives.size() << " collective samples over "
              << (world ? world->size() : 1) << " ranks\n";
  }
  return 0;
}

}  // namespace metamorph::cli

#include "launch/commands/bench_calibrate.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <vector>

#include "models/model_config.hpp"
#include "parallel/mpi_communicator.hpp"
#include "parallel/mpi_session.hpp"
#include "planner/cluster.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

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

// The GEMMs of one training step of `config` (tokens x out x in, per projection), or squares.
std::vector<planner::GemmSample> gemm_shapes(const std::optional<ModelConfig>& config,
                                             std::int64_t tokens, std::int64_t largest) {
  std::vector<planner::GemmSample> shapes;
  for (std::int64_t n = 128; n <= largest; n *= 2)
    shapes.push_back({static_cast<double>(n), static_cast<double>(n), static_cast<double>(n), 0});
  if (config) {
    const auto t = static_cast<double>(tokens), h = static_cast<double>(config->hidden_size);
    for (std::int64_t out :
         {config->q_size(), config->kv_size(), config->intermediate_size, config->vocab_size})
      shapes.push_back({t, static_cast<double>(out), h, 0});
    shapes.push_back({t, h, static_cast<double>(config->intermediate_size), 0});
  }
  return shapes;
}

}  // namespace

int bench_calibrate(const po::variables_map& vm) {
  require(vm.count("out"), "bench calibrate: --out calibration.json is required");
  const int repeats = vm["repeats"].as<int>();
  const auto largest = vm["largest"].as<std::int64_t>();
  require(repeats >= 1, "bench calibrate: --repeats must be >= 1, got ", repeats);
  require(largest >= 128, "bench calibrate: --largest must be >= 128, got ", largest);
  std::optional<ModelConfig> config;
  if (vm.count("model")) config = load_model_config(vm["model"].as<std::string>());
  const std::int64_t tokens = vm["seq"].as<std::int64_t>() * vm["micro-batch"].as<std::int64_t>();

  const char* launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  std::optional<MpiSession> mpi;
  std::unique_ptr<MpiCommunicator> world;
  if (launched != nullptr && std::atoi(launched) > 1) {
    mpi.emplace(nullptr, nullptr);
    world = MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions::from_environment());
  }
  const MPI_Comm comm = world ? world->handle() : MPI_COMM_NULL;
  const int rank = world ? world->rank() : 0;

  Arena arena;
  CpuBackend cpu_backend(arena);
  Backend& cpu = cpu_backend;  // the contract's default arguments
  planner::Calibration c;
  c.device = "cpu";
  for (planner::GemmSample g : gemm_shapes(config, tokens, largest)) {
    const auto m = static_cast<std::int64_t>(g.m), n = static_cast<std::int64_t>(g.n),
               k = static_cast<std::int64_t>(g.k);
    Tensor a = cpu.zeros({m, k}), b = cpu.zeros({n, k}), out = cpu.empty({m, n});
    const double s = median_seconds(
        repeats, [&] { cpu.matmul(a, false, b, true, out); }, comm);
    g.tflops = 2.0 * g.m * g.n * g.k / s / 1e12;
    c.gemms.push_back(g);
    c.peak_tflops = std::max(c.peak_tflops, g.tflops);
  }
  {
    const std::int64_t n = 16 << 20;  // 64 MiB: beyond the caches
    Tensor a = cpu.zeros({n}), b = cpu.empty({n});
    const double s = median_seconds(
        repeats, [&] { cpu.copy(a, b); }, comm);
    c.memory_bw_gbs = 2.0 * 4.0 * static_cast<double>(n) / s / 1e9;  // read + write
  }
  if (world) {
    const int p = world->size();
    for (std::int64_t bytes :
         {std::int64_t{64} << 10, std::int64_t{1} << 20, std::int64_t{16} << 20}) {
      const std::int64_t n = bytes / 4 / p * p;
      Tensor x = cpu.zeros({n}), y = cpu.zeros({n}), part = cpu.zeros({n / p});
      const auto sample = [&](const char* op, const std::function<void()>& run) {
        c.collectives.push_back(
            {op, p, true, static_cast<double>(4 * n), median_seconds(repeats, run, comm)});
      };
      sample("all_reduce", [&] { world->all_reduce(x); });
      sample("all_gather", [&] { world->all_gather(part, x); });
      sample("reduce_scatter", [&] { world->reduce_scatter(x, part); });
      sample("all_to_all", [&] { world->all_to_all(x, y); });
      // Ranks 0 and 1 exchange (the others wait at the barrier of the next sample).
      c.collectives.push_back({"p2p", 2, true, static_cast<double>(4 * n),
                               median_seconds(
                                   repeats,
                                   [&] {
                                     if (rank == 0) world->send(x, 1);
                                     if (rank == 1) world->recv(y, 0);
                                   },
                                   comm)});
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

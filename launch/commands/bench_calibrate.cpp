#include "launch/commands/bench_calibrate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <random>
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

// Seconds of one GEMM (or group of them) as a training step queues them: `op` is repeated
// back to back until a timing spans about a millisecond, so a short GEMM is not charged the host's
// wait for it (a 2048 x 3584 x 2048 GEMM takes some 50 us; a wait adds 10-20).
double seconds_per_call(const std::function<double(int)>& time_calls) {
  const double one = time_calls(1);
  const int calls = static_cast<int>(std::clamp(std::ceil(1e-3 / std::max(one, 1e-9)), 1.0, 256.0));
  return calls == 1 ? one : time_calls(calls) / calls;
}

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

// The GEMMs of one training step of `config` under every split in `splits` (TP sizes: each
// projection's output, the down projection's input divided), at `tokens` and half of it (the
// next smaller micro-batch); an MoE's experts as their groups, at the rows balanced routing gives
// each (tokens x top-k / experts), half and twice that (other micro-batches, EP across replicas),
// split as expert parallelism (E / s whole experts) or expert-TP (E experts of f / s) would.
void add_model_gemms(const ModelConfig& config, std::int64_t tokens,
                     const std::vector<std::int64_t>& splits,
                     std::vector<planner::GemmSample>& shapes) {
  const auto h = static_cast<double>(config.hidden_size);
  for (std::int64_t split : splits) {
    const auto s = static_cast<double>(split);
    for (const double t : {std::max(1.0, std::floor(static_cast<double>(tokens) / 2)),
                           static_cast<double>(tokens)}) {
      for (std::int64_t out :
           {config.q_size(), config.kv_size(), config.intermediate_size, config.vocab_size})
        shapes.push_back({t, std::ceil(static_cast<double>(out) / s), h, 0});
      shapes.push_back({t, h, std::ceil(static_cast<double>(config.intermediate_size) / s), 0});
    }
  }
  if (!config.moe.enabled()) return;
  const auto experts = static_cast<double>(config.moe.num_experts);
  const double rows = std::max(1.0, static_cast<double>(tokens * config.moe.top_k) / experts);
  const double f = static_cast<double>(config.moe.expert_intermediate_size > 0
                                           ? config.moe.expert_intermediate_size
                                           : config.intermediate_size);
  for (std::int64_t split : splits) {
    const auto s = static_cast<double>(split);
    if (config.moe.num_experts % split != 0) continue;
    // (groups, width): whole experts over `split` ranks, then each expert split over them.
    std::vector<std::pair<double, double>> groups = {{experts / s, f}};
    if (split > 1) groups.emplace_back(experts, std::ceil(f / s));
    for (const auto& [g, width] : groups)
      for (double r : {std::max(1.0, std::floor(rows / 2)), rows, 2 * rows}) {
        shapes.push_back({r, width, h, 0, g});
        shapes.push_back({r, h, width, 0, g});
      }
  }
}

// GEMM operands as a training step reads them: random values (zeros draw less power, so the
// clocks stay higher than in training) in enough copies that back-to-back calls do not find the
// previous call's operands in L2 (50 MB on an H100; the budget covers larger caches).
constexpr double kColdBytes = 256.0 * (1 << 20);

int cold_copies(double bytes_per_copy) {
  return static_cast<int>(std::clamp(std::ceil(kColdBytes / bytes_per_copy), 1.0, 8.0));
}

// Uniform values in [-1, 1): a pool drawn once, each tensor a window of it from a random start
// (drawing hundreds of millions of values per calibration would take minutes).
class RandomValues {
 public:
  explicit RandomValues(std::uint32_t seed) : rng_(seed), pool_(std::size_t{1} << 22) {
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (float& v : pool_) v = uniform(rng_);
  }
  Tensor operand(Backend& dev, const Shape& shape, DType dtype) {
    Tensor host = dev.host_empty(shape, DType::f32);
    float* v = host.data<float>();
    std::size_t at = std::uniform_int_distribution<std::size_t>(0, pool_.size() - 1)(rng_);
    for (std::int64_t i = 0; i < host.numel(); ++i, ++at) v[i] = pool_[at % pool_.size()];
    return dev.from_host(host, dtype);
  }

 private:
  std::mt19937 rng_;
  std::vector<float> pool_;
};

using TimedCalls = std::function<double(const std::function<void()>&)>;

// TFLOP/s of one m x n x k GEMM (out = a b^T), as the projections run it.
double gemm_tflops(Backend& dev, DType dtype, std::int64_t m, std::int64_t n, std::int64_t k,
                   RandomValues& rng, const TimedCalls& timed_calls) {
  const int copies = cold_copies(static_cast<double>((m + n) * k * dtype_size(dtype)));
  std::vector<Tensor> a, b;
  for (int i = 0; i < copies; ++i) {
    a.push_back(rng.operand(dev, {m, k}, dtype));
    b.push_back(rng.operand(dev, {n, k}, dtype));
  }
  Tensor out = dev.empty({m, n}, dtype);
  std::size_t call = 0;
  const double seconds = timed_calls([&] {
    const std::size_t i = call++ % a.size();
    dev.matmul(a[i], false, b[i], true, out);
  });
  return 2.0 * static_cast<double>(m * n * k) / seconds / 1e12;
}

// TFLOP/s of `groups` experts' m x n x k GEMMs as an MoE layer runs them: forward
// (Backend::grouped_matmul), input gradient (the same, the weights untransposed) and weight
// gradients (grouped_matmul_weight_grad: on GPUs the experts at once on the side streams).
double grouped_gemm_tflops(Backend& dev, DType dtype, std::int64_t m, std::int64_t n,
                           std::int64_t k, std::int64_t groups, RandomValues& rng,
                           const TimedCalls& timed_calls) {
  struct Operands {
    Tensor x, dy;
    std::vector<Tensor> w;
  };
  const int copies =
      cold_copies(static_cast<double>(groups * (m * k + m * n + n * k) * dtype_size(dtype)));
  std::vector<Operands> sets(static_cast<std::size_t>(copies));
  for (Operands& set : sets) {
    set.x = rng.operand(dev, {groups * m, k}, dtype);
    set.dy = rng.operand(dev, {groups * m, n}, dtype);
    for (std::int64_t g = 0; g < groups; ++g) set.w.push_back(rng.operand(dev, {n, k}, dtype));
  }
  Tensor y = dev.empty({groups * m, n}, dtype), dx = dev.empty({groups * m, k}, dtype);
  std::vector<Tensor> dw;
  for (std::int64_t g = 0; g < groups; ++g) dw.push_back(dev.zeros({n, k}, DType::f32));
  std::vector<Tensor*> grads;
  for (Tensor& t : dw) grads.push_back(&t);
  const std::vector<std::int64_t> counts(static_cast<std::size_t>(groups), m);
  std::size_t call = 0;
  const double seconds = timed_calls([&] {
    const Operands& set = sets[call++ % sets.size()];
    std::vector<const Tensor*> weights;
    for (const Tensor& t : set.w) weights.push_back(&t);
    dev.grouped_matmul(set.x, weights, counts, true, y);
    dev.grouped_matmul(set.dy, weights, counts, false, dx);
    dev.grouped_matmul_weight_grad(set.dy, set.x, counts, grads);
  });
  return 3 * 2.0 * static_cast<double>(groups * m * n * k) / seconds / 1e12;
}

// Squares up to `largest`, then the GEMMs of every model given, each shape once.
std::vector<planner::GemmSample> gemm_shapes(const std::vector<ModelConfig>& configs,
                                             std::int64_t tokens,
                                             const std::vector<std::int64_t>& splits,
                                             std::int64_t largest) {
  std::vector<planner::GemmSample> shapes;
  for (std::int64_t n = 128; n <= largest; n *= 2)
    shapes.push_back({static_cast<double>(n), static_cast<double>(n), static_cast<double>(n), 0});
  for (const ModelConfig& config : configs) add_model_gemms(config, tokens, splits, shapes);
  std::vector<planner::GemmSample> unique;
  for (const planner::GemmSample& g : shapes) {
    const bool seen = std::any_of(unique.begin(), unique.end(), [&](const planner::GemmSample& u) {
      return u.m == g.m && u.n == g.n && u.k == g.k && u.groups == g.groups;
    });
    if (!seen) unique.push_back(g);
  }
  return unique;
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
  // Each GEMM's calls back to back (seconds_per_call), timed `repeats` times.
  RandomValues rng(20261126);
  const auto timed_calls = [&](const std::function<void()>& op) {
    return seconds_per_call([&](int calls) {
      return timed([&] {
        for (int i = 0; i < calls; ++i) op();
      });
    });
  };
  // The TP splits a layout over these ranks can use: powers of two up to their number.
  std::vector<std::int64_t> splits;
  for (std::int64_t split = 1; split <= (world ? world->size() : 1); split *= 2)
    splits.push_back(split);
  for (planner::GemmSample g : gemm_shapes(gemm_models, tokens, splits, largest)) {
    const auto m = static_cast<std::int64_t>(g.m), n = static_cast<std::int64_t>(g.n),
               k = static_cast<std::int64_t>(g.k);
    if (g.groups > 1) {
      g.tflops = grouped_gemm_tflops(dev, dtype, m, n, k, static_cast<std::int64_t>(g.groups), rng,
                                     timed_calls);
    } else {
      g.tflops = gemm_tflops(dev, dtype, m, n, k, rng, timed_calls);
      c.peak_tflops = std::max(c.peak_tflops, g.tflops);
    }
    c.gemms.push_back(g);
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
    Tensor q = rng.operand(dev, {micro_batch, seq, heads, d}, dtype);
    Tensor kt = rng.operand(dev, {micro_batch, seq, kv, d}, dtype),
           v = rng.operand(dev, {micro_batch, seq, kv, d}, dtype);
    Tensor out = dev.empty(q.shape(), dtype), lse = dev.empty({micro_batch, heads, seq});
    Tensor dq = dev.empty(q.shape(), dtype), dk = dev.empty(kt.shape(), dtype),
           dv = dev.empty(v.shape(), dtype), dout = rng.operand(dev, q.shape(), dtype);
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

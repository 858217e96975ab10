#include "tests/support/mpi_corpus.hpp"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "models/init.hpp"
#include "parallel/mpi_communicator.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/data/prepare.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::test {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

std::filesystem::path shared_corpus_dir(
    const std::string& prefix, int vocab_size,
    const std::function<void(const std::filesystem::path&)>& populate) {
  long id = world_rank() == 0 ? static_cast<long>(::getpid()) : 0;
  MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  const auto dir = std::filesystem::temp_directory_path() / (prefix + std::to_string(id));
  if (world_rank() == 0) {
    std::filesystem::create_directories(dir);
    std::string text;
    for (int d = 0; d < 200; ++d)
      text += "line " + std::to_string(d * 7919 % 1000) + " of the corpus, with words " +
              std::string(static_cast<std::size_t>(d % 13), 'x') + ".\n\n";
    write_file(dir / "corpus.txt", text);
    data::PrepareOptions p;
    p.input = (dir / "corpus.txt").string();
    p.tokenizer = "byte";
    p.vocab_size = vocab_size;
    p.output_prefix = (dir / "data").string();
    p.validation_fraction = 0.05;
    data::prepare_dataset(p);
    if (populate) populate(dir);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return dir;
}

std::vector<double> losses_over_world(const RunOptions& options) {
  std::vector<double> losses;
  run_training(
      options, Logger(LogOptions{.rank = 1}),
      [&](const StepMetrics& m) { losses.push_back(m.loss); },
      MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", MpiOptions{}));
  return losses;
}

RunOptions small_run_options(const std::filesystem::path& dir, const std::string& save,
                             std::int64_t steps) {
  RunOptions o;
  o.model_path = (dir / "model.json").string();
  o.data_prefix = (dir / "data").string();
  o.steps = steps;
  o.seq = 16;
  o.micro_batch = 2;
  o.global_batch = 8;
  o.lr = 3e-3;
  o.warmup = 2;
  o.eval_batches = 2;
  o.save_dir = (dir / save).string();
  o.grad_bucket_elements = 1000;
  return o;
}

std::vector<float> single_rank_weights(const ModelConfig& config,
                                       const std::filesystem::path& checkpoint) {
  Arena arena;
  CpuBackend cpu(arena);
  ParameterSet params = make_parameters(cpu, config);
  LoadOptions load;
  load.with_optimizer = false;
  load_checkpoint(checkpoint, params, load);
  std::vector<float> all;
  for (const auto& p : params.all())
    all.insert(all.end(), p.value.data<float>(), p.value.data<float>() + p.value.numel());
  return all;
}

double relative_max_difference(const std::vector<float>& got, const std::vector<float>& reference) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < got.size() && i < reference.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(got[i] - reference[i])));
    scale = std::max(scale, static_cast<double>(std::abs(reference[i])));
  }
  return diff / scale;
}

}  // namespace metamorph::test

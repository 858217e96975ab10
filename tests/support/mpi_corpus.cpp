#include "tests/support/mpi_corpus.hpp"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "parallel/mpi_communicator.hpp"
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

double relative_max_difference(const std::vector<float>& got, const std::vector<float>& reference) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < got.size() && i < reference.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(got[i] - reference[i])));
    scale = std::max(scale, static_cast<double>(std::abs(reference[i])));
  }
  return diff / scale;
}

}  // namespace metamorph::test

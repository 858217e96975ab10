// A job in which rank 1 fails its peers, to show that rank 0's all-reduce ends with the watchdog's
// message within the timeout instead of hanging. Not a gtest: the job is meant to abort.
//   watchdog_probe hang   rank 1 stays alive but never joins (a stuck peer)
//   watchdog_probe exit   rank 1 is killed (a dead peer): mpirun or the watchdog ends the job
//   watchdog_probe throw  like hang, with abort_on_timeout off: rank 0 reports the CommError
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "parallel/mpi_communicator.hpp"
#include "parallel/mpi_session.hpp"

int main(int argc, char** argv) {
  using namespace metamorph;
  MpiSession session(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "hang";
  MpiOptions options;
  options.timeout_s = 2;
  options.abort_on_timeout = mode != "throw";
  options.size_checks = false;  // the same MPI traffic in debug and release builds
  auto world = MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", options);
  Arena arena;
  Tensor x = Tensor::zeros({8}, DType::f32, arena);
  world->all_reduce(x);  // everybody is alive here
  if (world->rank() == 1) {
    if (mode == "exit") std::raise(SIGKILL);
    // Longer than the timeout: if the watchdog did not fire, rank 0 would finish after this and
    // print "completed", which the test rejects.
    std::this_thread::sleep_for(std::chrono::seconds(mode == "throw" ? 8 : 20));
  }
  try {
    world->all_reduce(x);
  } catch (const CommError& e) {
    std::cerr << "caught CommError: " << e.what() << std::endl;
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  std::cout << "rank " << world->rank() << " completed the all-reduce" << std::endl;
  return 0;
}

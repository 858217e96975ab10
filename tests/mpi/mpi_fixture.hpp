#pragma once
// The world communicator for multi-rank tests: a short watchdog so a broken test aborts in
// seconds instead of hanging until ctest's timeout, and size checks on even in release builds.
#include <gtest/gtest.h>

#include <memory>

#include "parallel/mpi_communicator.hpp"

namespace metamorph::test {

inline MpiOptions test_mpi_options() {
  MpiOptions options;
  options.timeout_s = 60;
  options.size_checks = true;
  return options;
}

class MpiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world = MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", test_mpi_options());
  }
  std::unique_ptr<MpiCommunicator> world;
  Arena arena;
};

}  // namespace metamorph::test

#include "runtime/log/log.hpp"

#include <iostream>

namespace metamorph {

Logger::Logger(int rank, bool all_ranks) : rank_(rank), all_ranks_(all_ranks) {}

void Logger::info(const std::string& message) const {
  if (rank_ == 0 || all_ranks_) std::cout << "[rank " << rank_ << "] " << message << std::endl;
}

void Logger::warn(const std::string& message) const {
  std::cerr << "[rank " << rank_ << "] warning: " << message << std::endl;
}

}  // namespace metamorph

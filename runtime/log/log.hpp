#pragma once
// Rank-aware logging. By default only rank 0 prints progress; warnings and errors from any rank.
#include <iosfwd>
#include <string>

namespace metamorph {

class Logger {
 public:
  explicit Logger(int rank = 0, bool all_ranks = false);
  void info(const std::string& message) const;
  void warn(const std::string& message) const;
  int rank() const { return rank_; }

 private:
  int rank_;
  bool all_ranks_;
};

}  // namespace metamorph

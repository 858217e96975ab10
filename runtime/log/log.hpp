#pragma once
// Rank-aware logging, passed around explicitly (no global logger). Every line carries the rank.
// Only rank 0 prints info and progress unless all_ranks is set; warnings and errors come from
// every rank. Lines are written whole, one write per line, so ranks sharing a terminal do not
// interleave mid-line; threads of one rank (e.g. a checkpoint writer) may share a Logger and its
// copies.
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>

namespace metamorph {

struct LogOptions {
  int rank = 0;
  // Info and progress from every rank, not only rank 0.
  bool all_ranks = false;
  bool debug = false;
  // Streams for info/progress and for warnings/errors; null means std::cout / std::cerr.
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  // Whether `out` is a terminal (progress rewrites its line then). Unset: isatty(stdout) when out
  // is std::cout, false otherwise.
  int out_is_terminal = -1;
};

class Logger {
 public:
  explicit Logger(int rank = 0, bool all_ranks = false);
  explicit Logger(const LogOptions& options);

  void debug(const std::string& message) const;
  void info(const std::string& message) const;
  void warn(const std::string& message) const;
  void error(const std::string& message) const;

  int rank() const { return rank_; }
  // Whether this rank prints info and progress.
  bool prints_progress() const { return rank_ == 0 || all_ranks_; }
  bool out_is_terminal() const { return terminal_; }
  // "[rank 3] " (every line starts with it).
  std::string prefix() const;

  // For ProgressLine: writes text to the info stream as is (no prefix, no newline) and
  // remembers whether an unfinished progress line is on the terminal, so the next whole line
  // starts on a fresh one.
  void write_progress(const std::string& text, bool line_open) const;

 private:
  void write_line(std::ostream& stream, const std::string& text) const;

  int rank_;
  bool all_ranks_;
  bool debug_;
  std::ostream* out_;
  std::ostream* err_;
  bool terminal_;
  // Shared by copies: they write to the same streams.
  std::shared_ptr<std::mutex> mutex_ = std::make_shared<std::mutex>();
  std::shared_ptr<bool> progress_open_ = std::make_shared<bool>(false);
};

}  // namespace metamorph

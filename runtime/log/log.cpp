#include "runtime/log/log.hpp"

#include <unistd.h>

#include <iostream>

namespace metamorph {

Logger::Logger(int rank, bool all_ranks)
    : Logger(LogOptions{.rank = rank, .all_ranks = all_ranks}) {}

Logger::Logger(const LogOptions& options)
    : rank_(options.rank),
      all_ranks_(options.all_ranks),
      debug_(options.debug),
      out_(options.out != nullptr ? options.out : &std::cout),
      err_(options.err != nullptr ? options.err : &std::cerr) {
  if (options.out_is_terminal >= 0)
    terminal_ = options.out_is_terminal != 0;
  else
    terminal_ = out_ == &std::cout && isatty(STDOUT_FILENO) != 0;
}

std::string Logger::prefix() const {
  return "[rank " + std::to_string(rank_) + "] ";
}

void Logger::write_line(std::ostream& stream, const std::string& text) const {
  const std::lock_guard<std::mutex> lock(*mutex_);
  std::string line;
  // A progress line still open on the terminal would swallow this line's start.
  if (*progress_open_ && terminal_) line += '\n';
  *progress_open_ = false;
  line += prefix() + text + '\n';
  stream.write(line.data(), static_cast<std::streamsize>(line.size()));
  stream.flush();
}

void Logger::debug(const std::string& message) const {
  if (debug_ && prints_progress()) write_line(*out_, "debug: " + message);
}

void Logger::info(const std::string& message) const {
  if (prints_progress()) write_line(*out_, message);
}

void Logger::warn(const std::string& message) const {
  write_line(*err_, "warning: " + message);
}

void Logger::error(const std::string& message) const {
  write_line(*err_, "error: " + message);
}

void Logger::write_progress(const std::string& text, bool line_open) const {
  const std::lock_guard<std::mutex> lock(*mutex_);
  out_->write(text.data(), static_cast<std::streamsize>(text.size()));
  out_->flush();
  *progress_open_ = line_open;
}

}  // namespace metamorph

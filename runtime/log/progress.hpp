#pragma once
// A progress report for long work (tokenising, training): "label 120/1000 (12.0%) loss 2.3100
// tok/s 12.3k elapsed 1m02s eta 7m30s". On a terminal it rewrites one line with '\r'; into a file
// or pipe it prints whole lines, at most one per interval (or every k-th update), so logs stay
// short. Only ranks whose Logger prints progress print anything.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/log/log.hpp"

namespace metamorph {

struct ProgressField {
  std::string name;
  std::string value;
};

// Value formatting for fields: fixed(2.31, 4) = "2.3100"; si(12345) = "12.3k".
std::string fixed(double value, int digits);
// scientific(0.0014367, 2) = "1.44e-03": learning rates and other small magnitudes.
std::string scientific(double value, int digits);
std::string si(double value);
// 75 -> "1m15s", 3725 -> "1h02m05s".
std::string duration(double seconds);

struct ProgressOptions {
  // Terminal: redraw at most this often.
  double redraw_interval_s = 0.2;
  // Not a terminal: a line when this much time passed since the last one...
  double line_interval_s = 30.0;
  // ...or every this many updates (0: time only).
  std::int64_t line_every = 0;
};

class ProgressLine {
 public:
  // Seconds from an arbitrary origin; tests pass a fake clock.
  using Clock = std::function<double()>;

  // total <= 0: unknown, no percentage or ETA.
  ProgressLine(const Logger& log, std::string label, std::int64_t total,
               ProgressOptions options = {}, Clock clock = {});
  ~ProgressLine();
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // `done` units of `total` are finished.
  void update(std::int64_t done, const std::vector<ProgressField>& fields = {});
  // Prints the final state as a whole line (always, unless this rank is quiet). Called by the
  // destructor if not before.
  void finish(const std::vector<ProgressField>& fields = {});

  // The text of one report, without the rank prefix.
  std::string format(std::int64_t done, const std::vector<ProgressField>& fields,
                     double elapsed_s) const;

 private:
  const Logger& log_;
  std::string label_;
  std::int64_t total_;
  ProgressOptions options_;
  Clock clock_;
  double start_;
  double last_print_ = -1e300;
  std::int64_t updates_ = 0;
  std::int64_t done_ = 0;
  std::vector<ProgressField> fields_;
  std::size_t drawn_width_ = 0;
  bool finished_ = false;
};

}  // namespace metamorph

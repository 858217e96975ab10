#include "runtime/log/progress.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <utility>

namespace metamorph {

std::string fixed(double value, int digits) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(digits);
  out << value;
  return out.str();
}

std::string scientific(double value, int digits) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.*e", digits, value);
  return text;
}

std::string si(double value) {
  if (!std::isfinite(value)) return fixed(value, 0);
  const char* units[] = {"", "k", "M", "G", "T", "P"};
  int u = 0;
  double v = value;
  while (std::fabs(v) >= 999.95 && u < 5) {
    v /= 1000.0;
    ++u;
  }
  return fixed(v, u == 0 && v == std::floor(v) ? 0 : 1) + units[u];
}

std::string duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<long long>(std::llround(seconds));
  char buffer[64];
  if (s >= 3600)
    std::snprintf(buffer, sizeof buffer, "%lldh%02lldm%02llds", s / 3600, s / 60 % 60, s % 60);
  else if (s >= 60)
    std::snprintf(buffer, sizeof buffer, "%lldm%02llds", s / 60, s % 60);
  else
    std::snprintf(buffer, sizeof buffer, "%llds", s);
  return buffer;
}

namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

ProgressLine::ProgressLine(const Logger& log, std::string label, std::int64_t total,
                           ProgressOptions options, Clock clock)
    : log_(log),
      label_(std::move(label)),
      total_(total),
      options_(options),
      clock_(clock ? std::move(clock) : Clock(steady_seconds)),
      start_(clock_()) {}

ProgressLine::~ProgressLine() {
  if (!finished_) finish(fields_);
}

std::string ProgressLine::format(std::int64_t done, const std::vector<ProgressField>& fields,
                                 double elapsed_s) const {
  std::ostringstream out;
  out << label_ << ' ' << done;
  if (total_ > 0)
    out << '/' << total_ << " (" << fixed(100.0 * double(done) / double(total_), 1) << "%)";
  for (const auto& f : fields) out << ' ' << f.name << ' ' << f.value;
  out << " elapsed " << duration(elapsed_s);
  if (total_ > 0 && done < total_)
    out << " eta " << (done > 0 ? duration(elapsed_s / double(done) * double(total_ - done)) : "?");
  return out.str();
}

void ProgressLine::update(std::int64_t done, const std::vector<ProgressField>& fields) {
  done_ = done;
  fields_ = fields;
  ++updates_;
  if (!log_.prints_progress() || finished_) return;
  const double now = clock_();
  const std::string text = format(done, fields, now - start_);
  if (log_.out_is_terminal()) {
    if (now - last_print_ < options_.redraw_interval_s && done != total_) return;
    std::string line = log_.prefix() + text;
    const std::size_t width = line.size();
    if (width < drawn_width_) line.append(drawn_width_ - width, ' ');
    drawn_width_ = width;
    log_.write_progress("\r" + line, true);
  } else {
    const bool by_count = options_.line_every > 0 && updates_ % options_.line_every == 0;
    if (!by_count && now - last_print_ < options_.line_interval_s) return;
    log_.info(text);
  }
  last_print_ = now;
}

void ProgressLine::finish(const std::vector<ProgressField>& fields) {
  if (finished_) return;
  finished_ = true;
  fields_ = fields;
  if (!log_.prints_progress()) return;
  const std::string text = format(done_, fields_, clock_() - start_);
  if (log_.out_is_terminal()) {
    std::string line = log_.prefix() + text;
    if (line.size() < drawn_width_) line.append(drawn_width_ - line.size(), ' ');
    log_.write_progress("\r" + line + "\n", false);
  } else {
    log_.info(text);
  }
}

}  // namespace metamorph

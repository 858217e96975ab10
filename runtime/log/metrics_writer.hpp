#pragma once
// Metrics as JSON Lines: one object per line, flushed as it is written, so a crashed or running
// job's file is readable up to its last complete step. Non-finite numbers become null (JSON has
// no NaN), so readers see a missing value rather than a parse error.
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace metamorph {

class MetricsWriter {
 public:
  // Creates missing parent directories. append: keep an existing file's lines (resume);
  // otherwise start it afresh. Throws InputError naming the path when it cannot be opened.
  explicit MetricsWriter(const std::filesystem::path& path, bool append = false);

  // One JSON object; throws InputError when the write fails (e.g. the disk is full).
  void write(const nlohmann::json& record);

  const std::filesystem::path& path() const { return path_; }
  std::int64_t lines_written() const { return lines_; }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
  std::int64_t lines_ = 0;
};

}  // namespace metamorph

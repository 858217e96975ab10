#include "runtime/log/metrics_writer.hpp"

#include <cerrno>
#include <cstring>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;

MetricsWriter::MetricsWriter(const fs::path& path, bool append) : path_(path) {
  if (path.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    require(!ec, "cannot create the directory '", path.parent_path().string(),
            "' for metrics file '", path.string(), "': ", ec.message());
  }
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  require(out_.is_open(), "cannot open metrics file '", path.string(),
          "' for writing: ", std::strerror(errno));
}

void MetricsWriter::write(const nlohmann::json& record) {
  MM_ASSERT(record.is_object(), "a metrics record must be a JSON object, got ", record.dump());
  const std::string line = record.dump() + '\n';
  out_.write(line.data(), static_cast<std::streamsize>(line.size()));
  out_.flush();
  require(out_.good(), "writing metrics file '", path_.string(), "' failed (is the disk full?)");
  ++lines_;
}

}  // namespace metamorph

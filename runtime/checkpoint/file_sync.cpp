#include "runtime/checkpoint/file_sync.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

namespace fs = std::filesystem;

void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, "cannot open ", path.string(), " to flush it: ", std::strerror(errno));
  const int status = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  // Some filesystems cannot fsync a directory (EINVAL); the data itself was flushed.
  require(status == 0 || (error == EINVAL && fs::is_directory(path)), "cannot flush ",
          path.string(), " to disk: ", std::strerror(error));
}

void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    require(out.good(), "cannot create ", tmp.string());
    out << text;
    out.flush();
    require(out.good(), "cannot write ", tmp.string(), " (disk full?)");
  }
  sync_path(tmp);
  std::error_code error;
  fs::rename(tmp, path, error);
  require(!error, "cannot rename ", tmp.string(), " to ", path.string(), ": ", error.message());
  sync_path(path.parent_path().empty() ? fs::path(".") : path.parent_path());
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "cannot read ", path.string());
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

}  // namespace metamorph::checkpoint

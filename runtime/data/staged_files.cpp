#include "runtime/data/staged_files.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "runtime/core/error.hpp"

namespace metamorph::data {

namespace fs = std::filesystem;

StagedFiles::~StagedFiles() {
  discard();
}

fs::path StagedFiles::stage(const fs::path& final_path) {
  const fs::path parent = final_path.parent_path();
  if (!parent.empty()) {
    std::error_code error;
    fs::create_directories(parent, error);
    require(!error && fs::is_directory(parent), "cannot create the output directory ",
            parent.string(), ": ", error ? error.message() : "a file is in the way");
  }
  require(!fs::is_directory(final_path), "output ", final_path.string(),
          " is a directory; give a file prefix such as ", (final_path / "corpus").string());
  // The pid keeps two concurrent runs on one prefix from writing into each other's temporaries.
  fs::path temp = final_path;
  temp += concat(".tmp.", ::getpid());
  {
    std::ofstream probe(temp, std::ios::binary | std::ios::trunc);
    require(probe.good(), "cannot write ", temp.string(), ": ", std::strerror(errno));
  }
  entries_.push_back({temp, final_path});
  return temp;
}

void StagedFiles::commit() {
  for (const auto& entry : entries_) {
    std::error_code error;
    fs::rename(entry.temp, entry.final_path, error);
    require(!error, "cannot rename ", entry.temp.string(), " to ", entry.final_path.string(), ": ",
            error.message());
  }
  entries_.clear();
}

void StagedFiles::discard() noexcept {
  for (const auto& entry : entries_) {
    std::error_code ignored;
    fs::remove(entry.temp, ignored);
  }
  entries_.clear();
}

}  // namespace metamorph::data

#include "runtime/checkpoint/mapped_range.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

MappedRange::MappedRange(const std::filesystem::path& path, std::uint64_t first,
                         std::uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, "cannot open ", path.string(), " (", std::strerror(errno), ")");
  struct stat status {};
  const bool stat_ok = ::fstat(fd, &status) == 0;
  const auto file_bytes = static_cast<std::uint64_t>(stat_ok ? status.st_size : 0);
  // Touching a mapped page past the end of the file raises SIGBUS: refuse instead.
  if (!stat_ok || first + bytes > file_bytes) {
    ::close(fd);
    require(stat_ok, "cannot stat ", path.string(), " (", std::strerror(errno), ")");
    throw InputError(concat(path.string(), " has ", file_bytes, " bytes, its chunks reach byte ",
                            first + bytes, " (truncated file?)"));
  }
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  base_offset_ = first / page * page;
  length_ = static_cast<std::size_t>(first + bytes - base_offset_);
  if (length_ > 0) {
    base_ = ::mmap(nullptr, length_, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(base_offset_));
    const int error = errno;
    ::close(fd);  // the mapping keeps the file open
    if (base_ == MAP_FAILED) {
      base_ = nullptr;
      throw InputError(concat("cannot map ", length_, " bytes of ", path.string(), " (",
                              std::strerror(error), ")"));
    }
  } else {
    ::close(fd);
  }
}

MappedRange::~MappedRange() {
  if (base_ != nullptr) ::munmap(base_, length_);
}

const std::byte* MappedRange::at(std::uint64_t offset, std::uint64_t bytes) const {
  MM_ASSERT(offset >= base_offset_ && offset + bytes <= base_offset_ + length_, "bytes [", offset,
            ", ", offset + bytes, ") lie outside the mapped [", base_offset_, ", ",
            base_offset_ + length_, ")");
  return static_cast<const std::byte*>(base_) + (offset - base_offset_);
}

}  // namespace metamorph::checkpoint

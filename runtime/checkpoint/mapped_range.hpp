#pragma once
// A read-only memory mapping of part of a file. Loading maps the chunks it reads rather than
// pread'ing them: the page cache's bytes are then read once, by the pass that checks their
// Fletcher32 while copying them into the tensor, instead of being copied by the kernel and read
// again for the checksum. A file cut short after it was mapped would raise SIGBUS where a read
// would fail: committed checkpoints are never written again, and a file already short is refused
// when mapped.
#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace metamorph::checkpoint {

class MappedRange {
 public:
  // Maps the bytes [first, first + bytes) of `path`. InputError when the file cannot be opened
  // or mapped, or ends before those bytes do (a truncated file).
  MappedRange(const std::filesystem::path& path, std::uint64_t first, std::uint64_t bytes);
  ~MappedRange();
  MappedRange(const MappedRange&) = delete;
  MappedRange& operator=(const MappedRange&) = delete;

  // The byte at `offset` in the file; [offset, offset + bytes) must lie in the mapped range.
  const std::byte* at(std::uint64_t offset, std::uint64_t bytes) const;

 private:
  void* base_ = nullptr;           // the mapping, from a page boundary at or before `first`
  std::size_t length_ = 0;         // its length
  std::uint64_t base_offset_ = 0;  // the file offset of base_
};

}  // namespace metamorph::checkpoint

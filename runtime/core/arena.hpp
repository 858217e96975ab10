#pragma once
// Accounting allocator for tensor storage. It records the bytes in use and their peak, the
// number the planner's memory model is checked against.
#include <cstddef>
#include <mutex>

namespace metamorph {

enum class Device { cpu, cuda };

class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // 64-byte aligned; throws std::bad_alloc when the system refuses.
  void* allocate(std::size_t bytes);
  void release(void* ptr, std::size_t bytes);

  std::size_t bytes_in_use() const;
  std::size_t peak_bytes() const;
  // Starts a new peak measurement from the current use (e.g. per training step).
  void reset_peak();

 private:
  mutable std::mutex mutex_;
  std::size_t in_use_ = 0;
  std::size_t peak_ = 0;
};

}  // namespace metamorph

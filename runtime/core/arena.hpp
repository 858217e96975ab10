#pragma once
// Accounting allocator for tensor storage. It records the bytes in use and their peak, the
// number the planner's memory model is checked against. The base class hands out host memory;
// a device arena (runtime/backends/cuda/cuda_arena.hpp) overrides obtain/give_back and keeps
// the same accounting, so CPU and GPU peaks are measured the same way.
#include <cstddef>
#include <mutex>

namespace metamorph {

enum class Device { cpu, cuda };

class Arena {
 public:
  Arena() = default;
  virtual ~Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // 64-byte aligned; throws std::bad_alloc when the system refuses.
  void* allocate(std::size_t bytes);
  void release(void* ptr, std::size_t bytes);

  std::size_t bytes_in_use() const;
  std::size_t peak_bytes() const;
  // Starts a new peak measurement from the current use (e.g. per training step).
  void reset_peak();

 protected:
  // Memory for `size` bytes (a multiple of 64); throws std::bad_alloc when none is left.
  virtual void* obtain(std::size_t size);
  virtual void give_back(void* ptr, std::size_t size);

 private:
  mutable std::mutex mutex_;
  std::size_t in_use_ = 0;
  std::size_t peak_ = 0;
};

}  // namespace metamorph

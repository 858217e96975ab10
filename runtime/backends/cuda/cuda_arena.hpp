#pragma once
// GPU memory with the CPU Arena's accounting (bytes in use, peak). Freed blocks are kept in a
// cache keyed by their exact rounded size and handed out again, because cudaFree synchronises
// the device; the cache is not counted as in use, so the peak is what tensors held, exactly as
// on the CPU. All kernels run on the legacy default stream, so a block reused after release is
// ordered after every kernel that touched it.
#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "runtime/core/arena.hpp"

namespace metamorph::cuda {

class CudaArena final : public Arena {
 public:
  // Device memory, or page-locked host memory: the staging of transfers (checkpoint downloads
  // run at the link's speed instead of a pageable copy's, and reused blocks skip page faults).
  enum class Memory { device, pinned_host };
  explicit CudaArena(Memory memory = Memory::device) : memory_(memory) {}
  ~CudaArena() override;

  // Bytes held in the free-block cache (obtained from the driver, not in use).
  std::size_t cached_bytes() const;
  // Returns every cached block to the driver.
  void empty_cache();

 protected:
  void* obtain(std::size_t size) override;
  void give_back(void* ptr, std::size_t size) override;

 private:
  void free_block(void* ptr) const;

  const Memory memory_;
  mutable std::mutex cache_mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_blocks_;
  std::size_t cached_ = 0;
};

}  // namespace metamorph::cuda

#include "runtime/core/arena.hpp"

#include <cstdlib>
#include <new>

namespace metamorph {

namespace {
constexpr std::size_t kAlignment = 64;
std::size_t rounded(std::size_t bytes) {
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}
}  // namespace

void* Arena::obtain(std::size_t size) {
  void* ptr = std::aligned_alloc(kAlignment, size);
  if (ptr == nullptr) throw std::bad_alloc();
  return ptr;
}

void Arena::give_back(void* ptr, std::size_t) {
  std::free(ptr);
}

void* Arena::allocate(std::size_t bytes) {
  const std::size_t size = rounded(bytes == 0 ? 1 : bytes);
  void* ptr = obtain(size);
  std::lock_guard lock(mutex_);
  in_use_ += size;
  if (in_use_ > peak_) peak_ = in_use_;
  return ptr;
}

void Arena::release(void* ptr, std::size_t bytes) {
  if (ptr == nullptr) return;
  const std::size_t size = rounded(bytes == 0 ? 1 : bytes);
  give_back(ptr, size);
  std::lock_guard lock(mutex_);
  in_use_ -= size;
}

std::size_t Arena::bytes_in_use() const {
  std::lock_guard lock(mutex_);
  return in_use_;
}

std::size_t Arena::peak_bytes() const {
  std::lock_guard lock(mutex_);
  return peak_;
}

void Arena::reset_peak() {
  std::lock_guard lock(mutex_);
  peak_ = in_use_;
}

}  // namespace metamorph

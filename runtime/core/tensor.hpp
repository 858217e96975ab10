#pragma once
// A dense, contiguous, row-major tensor. Storage is reference counted and comes from an Arena,
// so every byte a layer keeps is in the arena's peak.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/arena.hpp"

namespace metamorph {

enum class DType { f32, bf16, i32, i64 };

std::size_t dtype_size(DType dtype);
std::string dtype_name(DType dtype);
// Parses "f32", "bf16", "i32", "i64"; throws InputError naming the valid ones.
DType parse_dtype(const std::string& name);

using Shape = std::vector<std::int64_t>;
std::int64_t shape_numel(const Shape& shape);
std::string shape_string(const Shape& shape);

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<std::int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<std::int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<std::uint16_t>() {
  return DType::bf16;
}

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised storage from the arena.
  static Tensor empty(const Shape& shape, DType dtype, Arena& arena, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype, Arena& arena);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // Negative dims count from the back, as in PyTorch.
  std::int64_t dim(int d) const;
  std::int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }

  void* raw() { return base(); }
  const void* raw() const { return base(); }
  // Typed access; throws if T does not match the dtype.
  template <class T>
  T* data() {
    check_dtype(dtype_of<T>());
    return static_cast<T*>(raw());
  }
  template <class T>
  const T* data() const {
    check_dtype(dtype_of<T>());
    return static_cast<const T*>(raw());
  }

  // Same storage, another shape of the same element count.
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) of the leading dimension, sharing storage.
  Tensor slice(std::int64_t begin, std::int64_t end) const;
  bool same_storage(const Tensor& other) const { return storage_ == other.storage_; }

 private:
  struct Storage;
  void check_dtype(DType wanted) const;
  void* base() const;

  std::shared_ptr<Storage> storage_;
  std::size_t offset_bytes_ = 0;
  Shape shape_;
  DType dtype_ = DType::f32;
};

}  // namespace metamorph

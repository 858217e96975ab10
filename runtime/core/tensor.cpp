#include "runtime/core/tensor.hpp"

#include <cstring>
#include <sstream>

#include "runtime/core/error.hpp"

namespace metamorph {

struct Tensor::Storage {
  Arena* arena = nullptr;
  void* ptr = nullptr;
  std::size_t bytes = 0;
  Device device = Device::cpu;
  ~Storage() { arena->release(ptr, bytes); }
};

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return 4;
    case DType::bf16:
      return 2;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
  }
  return 0;
}

std::string dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "f32";
    case DType::bf16:
      return "bf16";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "?";
}

DType parse_dtype(const std::string& name) {
  for (DType d : {DType::f32, DType::bf16, DType::i32, DType::i64})
    if (dtype_name(d) == name) return d;
  throw InputError(concat("unknown dtype '", name, "'; valid: f32, bf16, i32, i64"));
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Arena& arena, Device device) {
  for (auto d : shape) MM_ASSERT(d >= 0, "negative dimension in ", shape_string(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->arena = &arena;
  t.storage_->bytes = static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype);
  t.storage_->ptr = arena.allocate(t.storage_->bytes);
  t.storage_->device = device;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Arena& arena) {
  Tensor t = empty(shape, dtype, arena);
  std::memset(t.raw(), 0, t.bytes());
  return t;
}

std::int64_t Tensor::dim(int d) const {
  const int r = rank();
  const int index = d < 0 ? d + r : d;
  MM_ASSERT(index >= 0 && index < r, "dim ", d, " of a rank-", r, " tensor");
  return shape_[static_cast<std::size_t>(index)];
}

Device Tensor::device() const {
  return storage_ ? storage_->device : Device::cpu;
}

Tensor Tensor::view(const Shape& shape) const {
  MM_ASSERT(shape_numel(shape) == numel(), "view ", shape_string(shape), " of ",
            shape_string(shape_));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice(std::int64_t begin, std::int64_t end) const {
  MM_ASSERT(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice [", begin, ", ",
            end, ") of ", shape_string(shape_));
  Tensor t = *this;
  const std::int64_t row = numel() / (shape_[0] == 0 ? 1 : shape_[0]);
  t.offset_bytes_ += static_cast<std::size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

void Tensor::check_dtype(DType wanted) const {
  MM_ASSERT(dtype_ == wanted, "tensor is ", dtype_name(dtype_), ", accessed as ",
            dtype_name(wanted));
}

void* Tensor::base() const {
  MM_ASSERT(storage_ != nullptr, "undefined tensor");
  return static_cast<char*>(storage_->ptr) + offset_bytes_;
}

}  // namespace metamorph

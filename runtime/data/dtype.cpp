#include "runtime/data/dtype.hpp"

namespace metamorph::data {

std::optional<DType> dtype_from_code(std::uint8_t code) {
  if (code < 1 || code > 8) return std::nullopt;
  return static_cast<DType>(code);
}

std::size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
    case DType::kInt8:
      return 1;
    case DType::kInt16:
    case DType::kUInt16:
      return 2;
    case DType::kInt32:
    case DType::kFloat32:
      return 4;
    case DType::kInt64:
    case DType::kFloat64:
      return 8;
  }
  return 0;
}

std::string dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return "uint8";
    case DType::kInt8:
      return "int8";
    case DType::kInt16:
      return "int16";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kFloat64:
      return "float64";
    case DType::kFloat32:
      return "float32";
    case DType::kUInt16:
      return "uint16";
  }
  return "unknown";
}

bool is_integer(DType dtype) {
  return dtype != DType::kFloat32 && dtype != DType::kFloat64;
}

DType best_fitting_dtype(std::int64_t vocab_size) {
  return vocab_size < 65500 ? DType::kUInt16 : DType::kInt32;
}

}  // namespace metamorph::data

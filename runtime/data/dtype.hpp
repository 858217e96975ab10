#pragma once
// Element types of a Megatron indexed dataset's .bin file, by the numeric code its .idx stores.
#include <cstdint>
#include <optional>
#include <string>

namespace metamorph::data {

enum class DType : std::uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8,
};

// nullopt for a code Megatron does not define.
std::optional<DType> dtype_from_code(std::uint8_t code);
std::size_t element_size(DType dtype);
std::string dtype_name(DType dtype);
bool is_integer(DType dtype);

// Megatron's choice: uint16 while every id fits with room to spare, int32 beyond.
DType best_fitting_dtype(std::int64_t vocab_size);

}  // namespace metamorph::data

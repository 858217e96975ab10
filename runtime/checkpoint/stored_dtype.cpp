#include "runtime/checkpoint/stored_dtype.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

std::string stored_dtype_name(StoredDType dtype) {
  switch (dtype) {
    case StoredDType::f32:
      return "f32";
    case StoredDType::bf16:
      return "bf16";
    case StoredDType::f16:
      return "f16";
  }
  return "?";
}

StoredDType parse_stored_dtype(const std::string& name) {
  for (auto d : {StoredDType::f32, StoredDType::bf16, StoredDType::f16})
    if (stored_dtype_name(d) == name) return d;
  throw InputError(concat("unknown stored dtype '", name, "'; valid: f32, bf16, f16"));
}

std::size_t stored_dtype_size(StoredDType dtype) {
  return dtype == StoredDType::f32 ? 4 : 2;
}

hid_t stored_hdf5_type(StoredDType dtype) {
  return dtype == StoredDType::f32 ? H5T_IEEE_F32LE : H5T_STD_U16LE;
}

StoredDType stored_dtype_of(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return StoredDType::f32;
    case DType::bf16:
      return StoredDType::bf16;
    default:
      break;
  }
  throw InputError(concat("a checkpoint stores f32 or bf16 parameters, not ", dtype_name(dtype)));
}

float bf16_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t float_to_bf16(float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  if (std::isnan(value)) return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // stay NaN
  const std::uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1F;
  std::uint32_t mantissa = h & 0x3FF;
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000 | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return std::bit_cast<float>(sign);
    // Subnormal half: value = mantissa * 2^-24.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

std::uint16_t float_to_f16(float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  const float magnitude = std::fabs(value);
  if (std::isnan(value)) return static_cast<std::uint16_t>(sign | 0x7E00);
  if (magnitude >= 65520.0f) return static_cast<std::uint16_t>(sign | 0x7C00);  // rounds to inf
  if (magnitude < 6.103515625e-05f) {
    // Subnormal range: multiples of 2^-24, nearbyint rounds half to even.
    const auto m = static_cast<std::uint16_t>(std::nearbyint(std::ldexp(magnitude, 24)));
    return static_cast<std::uint16_t>(sign | m);
  }
  const std::uint32_t abs_bits = bits & 0x7FFFFFFF;
  const std::uint32_t rounded = abs_bits + 0xFFF + ((abs_bits >> 13) & 1);
  return static_cast<std::uint16_t>(sign | ((rounded - (112u << 23)) >> 13));
}

void convert_elements(StoredDType from, const void* src, StoredDType to, void* dst,
                      std::size_t count) {
  if (from == to) {
    std::memcpy(dst, src, count * stored_dtype_size(from));
    return;
  }
  auto to_float = [&](std::size_t i) -> float {
    if (from == StoredDType::f32) return static_cast<const float*>(src)[i];
    const auto bits = static_cast<const std::uint16_t*>(src)[i];
    return from == StoredDType::bf16 ? bf16_to_float(bits) : f16_to_float(bits);
  };
  for (std::size_t i = 0; i < count; ++i) {
    const float v = to_float(i);
    if (to == StoredDType::f32)
      static_cast<float*>(dst)[i] = v;
    else
      static_cast<std::uint16_t*>(dst)[i] =
          to == StoredDType::bf16 ? float_to_bf16(v) : float_to_f16(v);
  }
}

}  // namespace metamorph::checkpoint

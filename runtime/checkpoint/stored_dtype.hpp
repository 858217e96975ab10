#pragma once
// Element types a checkpoint stores. HDF5 has no bf16 (nor, in 1.10, f16), so both are stored as
// 16-bit unsigned integers and named by each dataset's "dtype" attribute.
#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/core/tensor.hpp"

namespace metamorph::checkpoint {

enum class StoredDType { f32, bf16, f16 };

std::string stored_dtype_name(StoredDType dtype);  // "f32", "bf16", "f16"
// Throws InputError naming the valid ones.
StoredDType parse_stored_dtype(const std::string& name);
std::size_t stored_dtype_size(StoredDType dtype);
// The HDF5 type of the bytes on disk and in memory (little-endian float or uint16).
hid_t stored_hdf5_type(StoredDType dtype);
// f32 -> f32, bf16 -> bf16; other tensor dtypes are not parameters (InputError).
StoredDType stored_dtype_of(DType dtype);

// Converts `count` elements between stored types: widening is exact; narrowing to bf16/f16
// rounds to nearest even, as PyTorch's .to(torch.bfloat16) does.
void convert_elements(StoredDType from, const void* src, StoredDType to, void* dst,
                      std::size_t count);

float bf16_to_float(std::uint16_t bits);
std::uint16_t float_to_bf16(float value);
float f16_to_float(std::uint16_t bits);
std::uint16_t float_to_f16(float value);

}  // namespace metamorph::checkpoint

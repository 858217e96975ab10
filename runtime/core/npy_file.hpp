#pragma once
// NumPy .npy files (format versions 1-3, C order, little-endian): the exchange format of
// `metamorph logits` with Python, so numpy.load reads what metamorph writes and vice versa.
#include <cstdint>
#include <filesystem>
#include <string>

#include "runtime/core/tensor.hpp"

namespace metamorph {

struct NpyArray {
  std::string descr;  // numpy's dtype string, e.g. "<i4", "<f4"
  Shape shape;        // () for a scalar
  std::string data;   // the raw element bytes, shape_numel(shape) * itemsize of them
};

// Reads a whole .npy file. InputError names the file and what is wrong with it (not .npy,
// Fortran order, big-endian or unknown dtype, truncated data).
NpyArray read_npy(const std::filesystem::path& path);

// Bytes per element of a descr read_npy accepts ("<i4" -> 4); InputError for any other.
std::size_t npy_itemsize(const std::string& descr, const std::filesystem::path& where);

// Writes `data` (shape_numel(shape) elements of descr's type) as a version-1 .npy file.
void write_npy(const std::filesystem::path& path, const std::string& descr, const Shape& shape,
               const void* data);

}  // namespace metamorph

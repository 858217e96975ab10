#pragma once
// What the op tests share: seeded random tensors, .npy files exchanged with the PyTorch
// reference scripts in tests/reference/, and the max-abs-normalised error they are judged by.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/core/backend.hpp"

namespace metamorph::test {

// Uniform in [lo, hi), reproducible from the seed.
Tensor random_tensor(Backend& backend, const Shape& shape, std::uint32_t seed, float lo = -1.0f,
                     float hi = 1.0f);
Tensor int_tensor(Backend& backend, const std::vector<std::int32_t>& values);

// f32 and i32 tensors as NumPy .npy (format 1.0, little endian, C order).
void save_npy(const std::filesystem::path& path, const Tensor& tensor);
// Any f4/f8/i4 .npy, as doubles; `shape` receives its shape when given.
std::vector<double> load_npy(const std::filesystem::path& path, Shape* shape = nullptr);

// dir/case<i>, created: the reference scripts handle every case directory in one run.
std::filesystem::path case_dir(const std::filesystem::path& dir, std::size_t index);

void save_json(const std::filesystem::path& path, const nlohmann::json& value);
nlohmann::json load_json(const std::filesystem::path& path);

// Runs `python tests/reference/<script> <dir>`; returns its output, throws if it failed.
std::string run_reference(const std::string& script, const std::filesystem::path& dir);

// max|a - b| / max(1e-6, max|b|)
double relative_error(const Tensor& actual, const std::vector<double>& expected);
double relative_error(const std::vector<double>& actual, const std::vector<double>& expected);

std::vector<double> to_doubles(const Tensor& tensor);

}  // namespace metamorph::test

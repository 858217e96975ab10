#include "tests/unit/ops/reference_io.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

#include "runtime/core/error.hpp"
#include "runtime/core/npy_file.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::test {

namespace fs = std::filesystem;

Tensor random_tensor(Backend& backend, const Shape& shape, std::uint32_t seed, float lo, float hi) {
  Tensor t = backend.empty(shape);
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(engine);
  return t;
}

Tensor int_tensor(Backend& backend, const std::vector<std::int32_t>& values) {
  Tensor t = backend.empty({static_cast<std::int64_t>(values.size())}, DType::i32);
  std::copy(values.begin(), values.end(), t.data<std::int32_t>());
  return t;
}

void save_npy(const fs::path& path, const Tensor& tensor) {
  MM_ASSERT(tensor.dtype() == DType::f32 || tensor.dtype() == DType::i32, "save_npy of ",
            dtype_name(tensor.dtype()));
  write_npy(path, tensor.dtype() == DType::f32 ? "<f4" : "<i4", tensor.shape(), tensor.raw());
}

std::vector<double> load_npy(const fs::path& path, Shape* shape) {
  const NpyArray array = read_npy(path);
  if (shape != nullptr) *shape = array.shape;
  const std::int64_t n = shape_numel(array.shape);
  std::vector<double> out(static_cast<std::size_t>(n));
  auto read = [&](auto type_tag) {
    using T = decltype(type_tag);
    for (std::int64_t i = 0; i < n; ++i) {
      T value;
      std::memcpy(&value, array.data.data() + static_cast<std::size_t>(i) * sizeof(T), sizeof(T));
      out[static_cast<std::size_t>(i)] = static_cast<double>(value);
    }
  };
  if (array.descr == "<f8")
    read(double{});
  else if (array.descr == "<f4")
    read(float{});
  else if (array.descr == "<i4")
    read(std::int32_t{});
  else
    throw std::runtime_error("unsupported .npy dtype " + array.descr + " in " + path.string());
  return out;
}

fs::path case_dir(const fs::path& dir, std::size_t index) {
  fs::path path = dir / ("case" + std::to_string(index));
  fs::create_directories(path);
  return path;
}

void save_json(const fs::path& path, const nlohmann::json& value) {
  write_file(path, value.dump(1));
}

nlohmann::json load_json(const fs::path& path) {
  return nlohmann::json::parse(read_file(path));
}

namespace {
// ctest's environment names the checkout; the configured source tree is the fallback, so the
// references are found however the binary is started.
fs::path repository_root() {
  const char* env = std::getenv("METAMORPH_SOURCE_DIR");
  return env != nullptr && *env != '\0' ? fs::path(env) : fs::path(METAMORPH_OPS_SOURCE_DIR);
}
}  // namespace

std::string run_reference(const std::string& script, const fs::path& dir) {
  const fs::path script_path = repository_root() / "tests" / "reference" / script;
  const CliResult result =
      run_shell(python() + " '" + script_path.string() + "' '" + dir.string() + "'");
  if (result.exit_code != 0)
    throw std::runtime_error(script + " failed (" + std::to_string(result.exit_code) + "):\n" +
                             result.out);
  return result.out;
}

std::vector<double> to_doubles(const Tensor& tensor) {
  std::vector<double> out(static_cast<std::size_t>(tensor.numel()));
  const float* p = tensor.data<float>();
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  return out;
}

double relative_error(const std::vector<double>& actual, const std::vector<double>& expected) {
  if (actual.size() != expected.size()) return INFINITY;
  double max_diff = 0.0, max_ref = 0.0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    // A NaN or a mismatched infinity must fail, never compare as small.
    const bool both_same_inf = std::isinf(actual[i]) && actual[i] == expected[i];
    const double diff = both_same_inf ? 0.0 : std::abs(actual[i] - expected[i]);
    if (std::isnan(diff)) return INFINITY;
    max_diff = std::max(max_diff, diff);
    if (std::isfinite(expected[i])) max_ref = std::max(max_ref, std::abs(expected[i]));
  }
  return max_diff / std::max(1e-6, max_ref);
}

double relative_error(const Tensor& actual, const std::vector<double>& expected) {
  return relative_error(to_doubles(actual), expected);
}

}  // namespace metamorph::test

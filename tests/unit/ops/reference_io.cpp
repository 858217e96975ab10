#include "tests/unit/ops/reference_io.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

#include "runtime/core/error.hpp"
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
  std::string shape = "(";
  for (std::int64_t d : tensor.shape()) shape += std::to_string(d) + ", ";
  if (tensor.rank() > 1) shape.resize(shape.size() - 2);
  if (tensor.rank() == 1) shape.resize(shape.size() - 1);
  shape += ")";
  std::string header = std::string("{'descr': '") + (tensor.dtype() == DType::f32 ? "<f4" : "<i4") +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  // magic (6) + version (2) + length (2) + header, padded with spaces to 64 bytes, '\n' last.
  const std::size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header += '\n';
  std::string bytes = "\x93NUMPY";
  bytes += '\x01';
  bytes += '\x00';
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>(header.size() >> 8);
  bytes += header;
  bytes.append(static_cast<const char*>(tensor.raw()), tensor.bytes());
  write_file(path, bytes);
}

std::vector<double> load_npy(const fs::path& path, Shape* shape) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    throw std::runtime_error("not a .npy file: " + path.string());
  const int major = static_cast<unsigned char>(bytes[6]);
  std::size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    start = 10;
  } else {
    for (int i = 0; i < 4; ++i)
      header_len |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    start = 12;
  }
  const std::string header = bytes.substr(start, header_len);
  const auto descr_at = header.find("'descr': '") + 10;
  const std::string descr = header.substr(descr_at, header.find('\'', descr_at) - descr_at);
  if (header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error("fortran-order .npy: " + path.string());
  const auto open = header.find('(', header.find("'shape'"));
  const auto close = header.find(')', open);
  Shape dims;
  std::string inner = header.substr(open + 1, close - open - 1);
  std::size_t pos = 0;
  while (pos < inner.size()) {
    const auto comma = inner.find(',', pos);
    const std::string item =
        inner.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (item.find_first_not_of(' ') != std::string::npos) dims.push_back(std::stoll(item));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (shape != nullptr) *shape = dims;
  const std::int64_t n = shape_numel(dims);
  const char* data = bytes.data() + start + header_len;
  std::vector<double> out(static_cast<std::size_t>(n));
  auto read = [&](auto type_tag, std::size_t size) {
    using T = decltype(type_tag);
    if (bytes.size() < start + header_len + size * static_cast<std::size_t>(n))
      throw std::runtime_error("truncated .npy: " + path.string());
    for (std::int64_t i = 0; i < n; ++i) {
      T value;
      std::memcpy(&value, data + static_cast<std::size_t>(i) * size, size);
      out[static_cast<std::size_t>(i)] = static_cast<double>(value);
    }
  };
  if (descr == "<f8")
    read(double{}, 8);
  else if (descr == "<f4")
    read(float{}, 4);
  else if (descr == "<i4")
    read(std::int32_t{}, 4);
  else
    throw std::runtime_error("unsupported .npy dtype " + descr + " in " + path.string());
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

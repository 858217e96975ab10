// f32 <-> bf16 / f16 conversions of the checkpoint loader against PyTorch's (round to nearest
// even, NaN stays NaN, overflow to infinity, subnormals).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <vector>

#include "runtime/checkpoint/stored_dtype.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::test {
namespace {

namespace fs = std::filesystem;
using namespace checkpoint;

template <class T>
std::vector<T> read_values(const fs::path& path) {
  const std::string bytes = read_file(path);
  std::vector<T> values(bytes.size() / sizeof(T));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(T));
  return values;
}

std::vector<float> probe_values() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          65504.0f,
                          65519.0f,
                          65520.0f,
                          1e6f,
                          -1e6f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::denorm_min(),
                          6.1e-5f,
                          5.96e-8f,
                          2.98e-8f,
                          3e-8f,
                          1e-8f,
                          1.0f + 1.0f / 256,
                          1.0f + 3.0f / 256,
                          1.0f + 1.0f / 2048,
                          1.0f + 3.0f / 2048};
  // Exact ties for bf16 rounding (the 16 dropped bits are 0x8000), both parities.
  for (std::uint32_t bits : {0x3F808000u, 0x3F818000u, 0xBF808000u, 0x7F7F8000u})
    v.push_back(std::bit_cast<float>(bits));
  std::mt19937 random(11);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  for (int i = 0; i < 4000; ++i) {
    const float x = std::bit_cast<float>(any_bits(random));
    if (!std::isnan(x)) v.push_back(x);
  }
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (int i = 0; i < 4000; ++i) v.push_back(normal(random));
  return v;
}

TEST(StoredDType, ConversionsMatchPyTorch) {
  TempDir dir;
  const auto values = probe_values();
  {
    std::ofstream out(dir / "in.f32", std::ios::binary);
    out.write(reinterpret_cast<const char*>(values.data()),
              static_cast<std::streamsize>(values.size() * sizeof(float)));
  }
  const auto r = run_shell(python() + " " + METAMORPH_CHECKPOINT_TEST_DIR + "/dtype_reference.py " +
                           (dir / "in.f32").string() + " " + dir.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (StoredDType narrow : {StoredDType::bf16, StoredDType::f16}) {
    const std::string name = stored_dtype_name(narrow);
    const auto want_bits = read_values<std::uint16_t>(dir / (name + ".u16"));
    const auto want_wide = read_values<float>(dir / (name + "_f32.f32"));
    ASSERT_EQ(want_bits.size(), values.size());
    std::vector<std::uint16_t> bits(values.size());
    convert_elements(StoredDType::f32, values.data(), narrow, bits.data(), values.size());
    std::vector<float> wide(values.size());
    convert_elements(narrow, want_bits.data(), StoredDType::f32, wide.data(), values.size());
    int bad = 0;
    for (std::size_t i = 0; i < values.size() && bad < 5; ++i) {
      if (bits[i] != want_bits[i]) {
        ++bad;
        ADD_FAILURE() << name << "(" << values[i] << " = 0x" << std::hex
                      << std::bit_cast<std::uint32_t>(values[i]) << ") = 0x" << bits[i]
                      << ", PyTorch 0x" << want_bits[i];
      }
      if (std::bit_cast<std::uint32_t>(wide[i]) != std::bit_cast<std::uint32_t>(want_wide[i])) {
        ++bad;
        ADD_FAILURE() << name << " 0x" << std::hex << want_bits[i] << " widened to " << wide[i]
                      << ", PyTorch " << want_wide[i];
      }
    }
  }
  // NaN stays NaN (PyTorch's NaN payload bits are not part of the contract).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(nan))));
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(nan))));
}

}  // namespace
}  // namespace metamorph::test

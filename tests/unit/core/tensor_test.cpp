#include <gtest/gtest.h>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph {
namespace {

TEST(Arena, TracksBytesInUseAndPeak) {
  Arena arena;
  {
    Tensor a = Tensor::empty({16, 16}, DType::f32, arena);  // 1024 bytes
    EXPECT_EQ(arena.bytes_in_use(), 1024u);
    {
      Tensor b = Tensor::empty({10}, DType::bf16, arena);  // 20 bytes, rounded to 64
      EXPECT_EQ(arena.bytes_in_use(), 1024u + 64u);
    }
    EXPECT_EQ(arena.bytes_in_use(), 1024u);
    EXPECT_EQ(arena.peak_bytes(), 1024u + 64u);
    arena.reset_peak();
    EXPECT_EQ(arena.peak_bytes(), 1024u);
  }
  EXPECT_EQ(arena.bytes_in_use(), 0u);
}

// A device arena overrides only where memory comes from; the accounting stays the base class's.
class RecordingArena final : public Arena {
 public:
  std::size_t obtained = 0, returned = 0;

 protected:
  void* obtain(std::size_t size) override {
    obtained += size;
    return Arena::obtain(size);
  }
  void give_back(void* ptr, std::size_t size) override {
    returned += size;
    Arena::give_back(ptr, size);
  }
};

TEST(Arena, SubclassesSupplyMemoryAndKeepTheAccounting) {
  RecordingArena arena;
  {
    Tensor a = Tensor::empty({10}, DType::bf16, arena);
    EXPECT_EQ(arena.obtained, 64u);  // sizes reach the hooks already rounded
    EXPECT_EQ(arena.bytes_in_use(), 64u);
  }
  EXPECT_EQ(arena.returned, 64u);
  EXPECT_EQ(arena.bytes_in_use(), 0u);
  EXPECT_EQ(arena.peak_bytes(), 64u);
}

TEST(Tensor, ViewsAndSlicesShareStorage) {
  Arena arena;
  Tensor t = Tensor::zeros({4, 3}, DType::f32, arena);
  Tensor rows = t.slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  rows.data<float>()[0] = 5.0f;
  EXPECT_EQ(t.data<float>()[3], 5.0f);
  Tensor flat = t.view({12});
  EXPECT_EQ(flat.data<float>()[3], 5.0f);
  EXPECT_TRUE(flat.same_storage(t));
  EXPECT_THROW(t.view({5}), std::logic_error);
  EXPECT_THROW(t.data<std::int32_t>(), std::logic_error);
}

TEST(Tensor, DtypeNames) {
  EXPECT_EQ(parse_dtype("bf16"), DType::bf16);
  EXPECT_EQ(dtype_size(DType::i64), 8u);
  try {
    parse_dtype("fp8");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("fp8"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos);
  }
}

TEST(CpuBackend, MatmulMatchesNaiveProductForEveryTransposition) {
  Arena arena;
  CpuBackend cpu(arena);
  const int m = 5, k = 7, n = 3;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Tensor a = cpu.empty(ta ? Shape{k, m} : Shape{m, k});
      Tensor b = cpu.empty(tb ? Shape{n, k} : Shape{k, n});
      for (int i = 0; i < a.numel(); ++i)
        a.data<float>()[i] = 0.1f * static_cast<float>(i % 11) - 0.3f;
      for (int i = 0; i < b.numel(); ++i)
        b.data<float>()[i] = 0.2f * static_cast<float>(i % 7) - 0.5f;
      Tensor c = cpu.empty({m, n});
      cpu.fill(c, 1.0f);
      cpu.matmul(a, ta, b, tb, c, 2.0f, 0.5f);
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double ref = 0.5;
          for (int p = 0; p < k; ++p) {
            const float av = ta ? a.data<float>()[p * m + i] : a.data<float>()[i * k + p];
            const float bv = tb ? b.data<float>()[j * k + p] : b.data<float>()[p * n + j];
            ref += 2.0 * av * bv;
          }
          EXPECT_NEAR(c.data<float>()[i * n + j], ref, 1e-5) << "ta=" << ta << " tb=" << tb;
        }
      }
    }
  }
}

TEST(CpuBackend, ReductionsAndBias) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor x = cpu.empty({2, 3});
  for (int i = 0; i < 6; ++i) x.data<float>()[i] = static_cast<float>(i);
  EXPECT_DOUBLE_EQ(cpu.sum_squares(x), 55.0);
  Tensor bias = cpu.zeros({3});
  cpu.bias_backward(x, bias);
  EXPECT_FLOAT_EQ(bias.data<float>()[0], 3.0f);
  EXPECT_FLOAT_EQ(bias.data<float>()[2], 7.0f);
  cpu.add_bias(x, bias);
  EXPECT_FLOAT_EQ(x.data<float>()[5], 12.0f);
  EXPECT_TRUE(cpu.all_finite(x));
  x.data<float>()[4] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(cpu.all_finite(x));
}

TEST(CpuBackend, EmbeddingGathersAndAccumulatesRepeatedIds) {
  Arena arena;
  CpuBackend cpu(arena);
  Tensor table = cpu.empty({4, 2});
  for (int i = 0; i < 8; ++i) table.data<float>()[i] = static_cast<float>(i);
  Tensor ids = cpu.empty({3}, DType::i32);
  ids.data<std::int32_t>()[0] = 2;
  ids.data<std::int32_t>()[1] = 0;
  ids.data<std::int32_t>()[2] = 2;
  Tensor out = cpu.empty({3, 2});
  cpu.embedding_forward(table, ids, out);
  EXPECT_EQ(out.data<float>()[0], 4.0f);
  EXPECT_EQ(out.data<float>()[3], 1.0f);
  Tensor dtable = cpu.zeros({4, 2});
  Tensor dout = cpu.empty({3, 2});
  cpu.fill(dout, 1.0f);
  cpu.embedding_backward(ids, dout, dtable);
  EXPECT_EQ(dtable.data<float>()[4], 2.0f);
  EXPECT_EQ(dtable.data<float>()[0], 1.0f);
  EXPECT_EQ(dtable.data<float>()[2], 0.0f);
}

}  // namespace
}  // namespace metamorph

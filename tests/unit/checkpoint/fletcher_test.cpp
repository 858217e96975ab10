// Our Fletcher32 must equal HDF5's filter bit for bit (h5py verifies our chunks with HDF5's):
// HDF5 itself is the reference here, on chunks of odd, short and multi-block lengths.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/checkpoint/fletcher32.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::test {
namespace {

// Lets HDF5's own Fletcher32 filter checksum one chunk of `bytes` and returns the stored sum.
std::uint32_t hdf5_fletcher32(const std::filesystem::path& path,
                              const std::vector<std::uint8_t>& bytes) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const hsize_t n = bytes.size();
  const hid_t space = H5Screate_simple(1, &n, nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, &n);
  H5Pset_fletcher32(dcpl);
  const hid_t dataset = H5Dcreate2(file, "d", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Dwrite(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data());
  H5Dclose(dataset);
  H5Fclose(file);
  const hid_t reopened = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t d = H5Dopen2(reopened, "d", H5P_DEFAULT);
  std::vector<std::uint8_t> raw(bytes.size() + 4);
  const hsize_t origin = 0;
  std::uint32_t mask = 0;
  H5Dread_chunk(d, H5P_DEFAULT, &origin, &mask, raw.data());
  H5Dclose(d);
  H5Fclose(reopened);
  H5Pclose(dcpl);
  H5Sclose(space);
  std::uint32_t sum = 0;
  std::memcpy(&sum, raw.data() + bytes.size(), 4);
  return sum;
}

std::vector<checkpoint::ChecksumKernel> kernels() {
  std::vector<checkpoint::ChecksumKernel> all = {checkpoint::ChecksumKernel::fastest,
                                                 checkpoint::ChecksumKernel::portable};
  if (checkpoint::checksum_kernel_available(checkpoint::ChecksumKernel::avx2))
    all.push_back(checkpoint::ChecksumKernel::avx2);
  return all;
}

TEST(Fletcher32, MatchesHdf5sFilter) {
  TempDir dir;
  std::mt19937 random(5);
  // Around the lane steps (32 bytes), the folds (every 8 KiB) and the streamed copies (1 MiB).
  for (std::size_t length : {1u, 2u, 3u, 31u, 32u, 33u, 719u, 720u, 721u, 1001u, 8191u, 8192u,
                             8193u, 65536u, 1000003u, 1048576u, 1048608u + 7u}) {
    std::vector<std::uint8_t> bytes(length);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(random());
    const std::uint32_t expected = hdf5_fletcher32(dir / "f.h5", bytes);
    for (const auto kernel : kernels()) {
      EXPECT_EQ(checkpoint::fletcher32(bytes.data(), bytes.size(), kernel), expected)
          << length << " bytes, kernel " << static_cast<int>(kernel);
      // The copy lands at every alignment (streamed stores need 32 bytes) and sums the same.
      for (std::size_t shift : {0u, 2u, 32u}) {
        std::vector<std::uint8_t> copy(length + 64 + shift, 0xa5);
        auto* aligned = reinterpret_cast<std::uint8_t*>(
            (reinterpret_cast<std::uintptr_t>(copy.data()) + 31) / 32 * 32 + shift);
        EXPECT_EQ(checkpoint::fletcher32_copy(bytes.data(), aligned, bytes.size(), kernel),
                  expected)
            << length << " bytes copied, kernel " << static_cast<int>(kernel);
        EXPECT_EQ(std::memcmp(aligned, bytes.data(), length), 0) << length << " bytes";
        EXPECT_EQ(aligned[length], 0xa5) << "wrote past the end";
      }
    }
  }
}

// A chunk summed in pieces, some copied, gives the whole chunk's sum: random cuts, and pieces
// that are all zero or all 0xff before and after the others.
TEST(Fletcher32, PiecesSumAsTheWholeChunk) {
  TempDir dir;
  std::mt19937 random(11);
  std::vector<std::vector<std::uint8_t>> chunks;
  for (std::size_t length : {4001u, 70000u, 1u << 21}) {
    chunks.emplace_back(length);
    for (auto& b : chunks.back()) b = static_cast<std::uint8_t>(random());
  }
  chunks.emplace_back(3000, 0);
  std::fill(chunks.back().begin() + 1000, chunks.back().begin() + 2000, 0xff);
  chunks.emplace_back(3000, 0);
  chunks.back()[2999] = 7;
  for (const auto& bytes : chunks) {
    const std::uint32_t expected = hdf5_fletcher32(dir / "p.h5", bytes);
    for (const auto kernel : kernels()) {
      for (int trial = 0; trial < 4; ++trial) {
        std::vector<std::size_t> cuts = {0, bytes.size()};
        if (bytes.size() == 3000) cuts.insert(cuts.end(), {1000, 2000});
        for (int i = 0; i < 3; ++i) cuts.push_back(random() % (bytes.size() / 2) * 2);
        std::sort(cuts.begin(), cuts.end());
        checkpoint::Fletcher32 sum(kernel);
        std::vector<std::uint8_t> copy(bytes.size());
        for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
          const std::size_t from = cuts[i], length = cuts[i + 1] - from;
          if ((i + trial) % 2 == 0)
            sum.add(bytes.data() + from, length);
          else
            sum.add_copy(bytes.data() + from, copy.data() + from, length);
        }
        EXPECT_EQ(sum.value(), expected)
            << bytes.size() << " bytes, kernel " << static_cast<int>(kernel) << ", trial " << trial;
      }
    }
  }
}

// A sum whose residue is 0 reads 0 only when every byte is 0, else 0xffff: HDF5's folds never
// reach 0 from a non-zero sum.
TEST(Fletcher32, ZeroResiduesReadAsHdf5WritesThem) {
  TempDir dir;
  std::vector<std::vector<std::uint8_t>> cases = {
      std::vector<std::uint8_t>(4000, 0xff),      // every word 65535: both sums are 0 mod 65535
      std::vector<std::uint8_t>(1u << 20, 0xff),  // the same through the lanes
      std::vector<std::uint8_t>(4096, 0),         // all zero
      std::vector<std::uint8_t>(4097, 0)};        // all zero, odd length
  cases.emplace_back(4097, 0);
  cases.back().back() = 1;  // only the odd last byte is not zero
  cases.emplace_back(2 * 65535, 0);
  cases.back()[1] = 1;  // sum1 = 1, sum2 = 65535: a zero residue in sum2 only
  for (const auto& bytes : cases) {
    const std::uint32_t expected = hdf5_fletcher32(dir / "z.h5", bytes);
    for (const auto kernel : kernels())
      EXPECT_EQ(checkpoint::fletcher32(bytes.data(), bytes.size(), kernel), expected)
          << bytes.size() << " bytes, kernel " << static_cast<int>(kernel);
  }
  for (const auto kernel : kernels()) EXPECT_EQ(checkpoint::fletcher32(nullptr, 0, kernel), 0u);
}

}  // namespace
}  // namespace metamorph::test

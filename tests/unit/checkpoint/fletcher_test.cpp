// Our Fletcher32 must equal HDF5's filter bit for bit (h5py verifies our chunks with HDF5's):
// HDF5 itself is the reference here, on chunks of odd, short and multi-block lengths.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstring>
#include <random>
#include <vector>

#include "runtime/checkpoint/chunk_io.hpp"
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

TEST(Fletcher32, MatchesHdf5sFilter) {
  TempDir dir;
  std::mt19937 random(5);
  for (std::size_t length : {1u, 2u, 3u, 719u, 720u, 721u, 1001u, 65536u, 1000003u}) {
    std::vector<std::uint8_t> bytes(length);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(random());
    EXPECT_EQ(checkpoint::fletcher32(bytes.data(), bytes.size()),
              hdf5_fletcher32(dir / "f.h5", bytes))
        << length << " bytes";
  }
  // All 0xff words are the case where a fold's representation of zero matters.
  std::vector<std::uint8_t> ones(4000, 0xff);
  EXPECT_EQ(checkpoint::fletcher32(ones.data(), ones.size()), hdf5_fletcher32(dir / "g.h5", ones));
}

}  // namespace
}  // namespace metamorph::test

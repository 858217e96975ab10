#include "runtime/core/npy_file.hpp"

#include <cstring>
#include <fstream>
#include <iterator>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;

// The value of 'key' in the header dict, up to (not including) the next top-level comma or the
// closing brace: "'<i4'", "False", "(2, 3)".
std::string header_value(const std::string& header, const std::string& key, const fs::path& path) {
  const std::string quoted = "'" + key + "'";
  const auto at = header.find(quoted);
  require(at != std::string::npos, path.string(), ": .npy header has no ", quoted, " (", header,
          ")");
  auto start = header.find(':', at + quoted.size());
  require(start != std::string::npos, path.string(), ": malformed .npy header ", header);
  ++start;
  while (start < header.size() && header[start] == ' ') ++start;
  std::size_t end = start;
  int depth = 0;
  while (end < header.size()) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    ++end;
  }
  return header.substr(start, end - start);
}

Shape parse_shape(const std::string& text, const fs::path& path) {
  require(text.size() >= 2 && text.front() == '(' && text.back() == ')', path.string(),
          ": .npy shape ", text, " is not a tuple");
  Shape shape;
  std::size_t pos = 1;
  while (pos < text.size() - 1) {
    auto comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size() - 1;
    const std::string item = text.substr(pos, comma - pos);
    if (item.find_first_not_of(' ') != std::string::npos) {
      std::size_t used = 0;
      long long value = -1;
      try {
        value = std::stoll(item, &used);
      } catch (const std::exception&) {
      }
      require(value >= 0, path.string(), ": .npy shape ", text, " has a bad dimension '", item,
              "'");
      shape.push_back(value);
    }
    pos = comma + 1;
  }
  return shape;
}

}  // namespace

std::size_t npy_itemsize(const std::string& descr, const fs::path& where) {
  for (const char* d : {"|i1", "|u1", "|b1"})
    if (descr == d) return 1;
  for (const char* d : {"<i2", "<u2", "<f2"})
    if (descr == d) return 2;
  for (const char* d : {"<i4", "<u4", "<f4"})
    if (descr == d) return 4;
  for (const char* d : {"<i8", "<u8", "<f8"})
    if (descr == d) return 8;
  throw InputError(concat(where.string(), ": .npy dtype ", descr,
                          " is not supported (little-endian integers or floats of 1 to 8 bytes)"));
}

NpyArray read_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "cannot read ", path.string());
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  require(bytes.size() >= 10 && bytes.compare(0, kMagicSize, kMagic) == 0, path.string(),
          ": not a .npy file (no \\x93NUMPY magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  require(major >= 1 && major <= 3, path.string(), ": .npy format version ", major,
          " is not supported (1, 2 or 3)");
  std::size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    start = 10;
  } else {
    require(bytes.size() >= 12, path.string(), ": truncated .npy header");
    for (int i = 0; i < 4; ++i)
      header_len |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    start = 12;
  }
  require(bytes.size() >= start + header_len, path.string(), ": truncated .npy header");
  const std::string header = bytes.substr(start, header_len);

  NpyArray array;
  std::string descr = header_value(header, "descr", path);
  require(descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"'), path.string(),
          ": .npy descr ", descr, " is not a simple dtype");
  array.descr = descr.substr(1, descr.size() - 2);
  const std::size_t itemsize = npy_itemsize(array.descr, path);
  require(header_value(header, "fortran_order", path) == "False", path.string(),
          ": Fortran-order .npy arrays are not supported (save with numpy.ascontiguousarray)");
  array.shape = parse_shape(header_value(header, "shape", path), path);
  const std::size_t want = static_cast<std::size_t>(shape_numel(array.shape)) * itemsize;
  const std::size_t have = bytes.size() - start - header_len;
  require(have >= want, path.string(), ": .npy data holds ", have, " bytes, shape ",
          shape_string(array.shape), " of ", array.descr, " needs ", want);
  array.data = bytes.substr(start + header_len, want);
  return array;
}

void write_npy(const fs::path& path, const std::string& descr, const Shape& shape,
               const void* data) {
  const std::size_t bytes =
      static_cast<std::size_t>(shape_numel(shape)) * npy_itemsize(descr, path);
  std::string dims;
  for (std::size_t i = 0; i < shape.size(); ++i)
    dims += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // magic (6) + version (2) + length (2) + header, padded with spaces to 64 bytes, '\n' last.
  const std::size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  require(out.good(), "cannot write ", path.string());
  out.write(kMagic, kMagicSize);
  const char version_and_length[4] = {1, 0, static_cast<char>(header.size() & 0xff),
                                      static_cast<char>(header.size() >> 8)};
  out.write(version_and_length, 4);
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  require(out.good(), "writing ", path.string(), " failed");
}

}  // namespace metamorph

#include "runtime/checkpoint/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "runtime/checkpoint/file_sync.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

namespace fs = std::filesystem;

std::size_t safetensors_dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
    return 1;
  throw InputError(concat("unknown safetensors dtype '", dtype,
                          "'; valid: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, "
                          "F8_E5M2"));
}

namespace {

std::uint64_t read_le64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
  return v;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path) {
  const std::string where = "safetensors file " + path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, where, ": cannot open (", std::strerror(errno), ")");
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size > 0) {
    mapping_ = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping_ == MAP_FAILED) mapping_ = nullptr;
  }
  ::close(fd);
  require(size >= 8 && mapping_ != nullptr, where, ": too short or unreadable (", size,
          " bytes); expected an 8-byte header length first");
  mapped_bytes_ = static_cast<std::size_t>(size);
  const auto* bytes = static_cast<const std::byte*>(mapping_);
  const std::uint64_t header_size = read_le64(bytes);
  require(header_size <= mapped_bytes_ - 8, where, ": header length ", header_size,
          " exceeds the file (", mapped_bytes_, " bytes); truncated or not safetensors");
  data_ = bytes + 8 + header_size;
  const std::uint64_t data_size = mapped_bytes_ - 8 - header_size;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8),
                                   reinterpret_cast<const char*>(data_));
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat(where, ": header is not valid JSON (", e.what(), ")"));
  }
  require(header.is_object(), where, ": header is not a JSON object");
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      metadata_ = entry;
      continue;
    }
    const std::string at = concat(where, ", tensor ", name, ": ");
    require(entry.is_object() && entry.contains("dtype") && entry["dtype"].is_string() &&
                entry.contains("shape") && entry["shape"].is_array() &&
                entry.contains("data_offsets") && entry["data_offsets"].is_array() &&
                entry["data_offsets"].size() == 2,
            at, "needs \"dtype\", \"shape\" and two \"data_offsets\"");
    SafetensorsTensor t;
    t.name = name;
    t.dtype = entry["dtype"].get<std::string>();
    for (const auto& d : entry["shape"]) {
      require(d.is_number_unsigned(), at, "shape ", entry["shape"].dump(),
              " must hold non-negative integers");
      t.shape.push_back(d.get<std::int64_t>());
    }
    require(entry["data_offsets"][0].is_number_unsigned() &&
                entry["data_offsets"][1].is_number_unsigned(),
            at, "data_offsets must be non-negative integers");
    t.begin = entry["data_offsets"][0].get<std::uint64_t>();
    t.end = entry["data_offsets"][1].get<std::uint64_t>();
    std::size_t element = 0;
    try {
      element = safetensors_dtype_size(t.dtype);
    } catch (const InputError& e) {
      throw InputError(at + e.what());
    }
    require(t.begin <= t.end && t.end <= data_size, at, "data_offsets [", t.begin, ", ", t.end,
            "] lie outside the ", data_size, " data bytes (truncated file?)");
    require(t.end - t.begin == static_cast<std::uint64_t>(shape_numel(t.shape)) * element, at,
            t.end - t.begin, " bytes do not hold ", t.dtype, " ", shape_string(t.shape));
    tensors_.push_back(std::move(t));
  }
  std::sort(tensors_.begin(), tensors_.end(),
            [](const auto& a, const auto& b) { return a.begin < b.begin; });
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapped_bytes_);
}

void write_safetensors(const fs::path& path, const std::vector<SafetensorsEntry>& entries,
                       const nlohmann::json& metadata,
                       const std::function<void(std::size_t, std::vector<std::byte>&)>& produce) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> sizes;
  for (const auto& e : entries) {
    const std::uint64_t bytes =
        static_cast<std::uint64_t>(shape_numel(e.shape)) * safetensors_dtype_size(e.dtype);
    header[e.name] = {
        {"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    sizes.push_back(bytes);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as HF writes it
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    require(out.good(), "cannot create ", tmp.string());
    char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((text.size() >> (8 * i)) & 0xFF);
    out.write(length, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::vector<std::byte> buffer;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      buffer.clear();
      produce(i, buffer);
      MM_ASSERT(buffer.size() == sizes[i], entries[i].name, ": produced ", buffer.size(),
                " bytes, expected ", sizes[i]);
      out.write(reinterpret_cast<const char*>(buffer.data()),
                static_cast<std::streamsize>(buffer.size()));
      require(out.good(), "cannot write ", tmp.string(), ", tensor ", entries[i].name,
              " (disk full?)");
    }
    out.flush();
    require(out.good(), "cannot write ", tmp.string(), " (disk full?)");
  }
  sync_path(tmp);
  std::error_code error;
  fs::rename(tmp, path, error);
  require(!error, "cannot rename ", tmp.string(), " to ", path.string(), ": ", error.message());
}

}  // namespace metamorph::checkpoint

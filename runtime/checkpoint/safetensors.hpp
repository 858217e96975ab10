#pragma once
// The safetensors file format (Hugging Face): an 8-byte little-endian header length N, N bytes of
// JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// tensors' bytes, offsets relative to the end of the header.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph::checkpoint {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F16", ...
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // byte range in the data section
};

// Element size of a safetensors dtype name; InputError for names the format does not define.
std::size_t safetensors_dtype_size(const std::string& dtype);

// A safetensors file, memory-mapped and validated (offsets inside the file, sizes matching
// dtype and shape). Errors are InputErrors naming the file and the tensor.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const nlohmann::json& metadata() const { return metadata_; }
  const std::byte* data(const SafetensorsTensor& tensor) const { return data_ + tensor.begin; }

 private:
  std::filesystem::path path_;
  void* mapping_ = nullptr;
  std::size_t mapped_bytes_ = 0;
  const std::byte* data_ = nullptr;
  std::vector<SafetensorsTensor> tensors_;
  nlohmann::json metadata_;
};

struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  Shape shape;
};

// Writes `entries` in order; produce(i, buffer) fills buffer with entry i's bytes (its exact
// size). Written to a temporary name, fsync'ed and renamed, so `path` is never half-written.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<SafetensorsEntry>& entries, const nlohmann::json& metadata,
                       const std::function<void(std::size_t, std::vector<std::byte>&)>& produce);

}  // namespace metamorph::checkpoint

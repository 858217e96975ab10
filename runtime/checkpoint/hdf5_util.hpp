#pragma once
// Thin RAII and error plumbing over the HDF5 C API, so the checkpoint code can say which file
// and which tensor an HDF5 failure belongs to instead of letting HDF5 print its error stack.
#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph::checkpoint {

// An owned HDF5 identifier, closed with the matching H5*close on destruction.
class H5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Handle() = default;
  H5Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  H5Handle(H5Handle&& other) noexcept { swap(other); }
  H5Handle& operator=(H5Handle&& other) noexcept {
    H5Handle dead(std::move(other));
    swap(dead);
    return *this;
  }
  ~H5Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether the close succeeded (a file's close flushes it).
  bool close() {
    if (id_ < 0) return true;
    const herr_t status = closer_(id_);
    id_ = H5I_INVALID_HID;
    return status >= 0;
  }
  void reset() { close(); }

 private:
  void swap(H5Handle& other) noexcept {
    std::swap(id_, other.id_);
    std::swap(closer_, other.closer_);
  }
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// While alive, HDF5 keeps its error stack to itself (errors become exceptions with messages).
class QuietHdf5Errors {
 public:
  QuietHdf5Errors();
  ~QuietHdf5Errors();
  QuietHdf5Errors(const QuietHdf5Errors&) = delete;
  QuietHdf5Errors& operator=(const QuietHdf5Errors&) = delete;

 private:
  H5E_auto2_t old_func_ = nullptr;
  void* old_data_ = nullptr;
};

// The innermost messages of HDF5's current error stack, e.g. "data error detected by Fletcher32
// checksum", or "unknown HDF5 error" when the stack is empty.
std::string hdf5_error_text();

// require() for HDF5 calls: the error stack is read only after `ok` was computed (function
// arguments have no evaluation order, so it cannot be an argument next to the call).
template <class... Parts>
void require_h5(bool ok, Parts&&... parts) {
  if (!ok) throw InputError(concat(std::forward<Parts>(parts)..., " (", hdf5_error_text(), ")"));
}

// File access: latest file format (checksummed metadata), file locking off (shared filesystems
// often lack the locks HDF5 wants; the commit protocol, not locks, keeps readers safe).
H5Handle file_access_plist();
H5Handle create_file(const std::filesystem::path& path);
// Throws InputError naming the file when it cannot be opened.
H5Handle open_file(const std::filesystem::path& path, bool writable = false);
H5Handle open_dataset(hid_t file, const std::string& path);
bool link_exists(hid_t file, const std::string& path);
// Creates the groups on the way to `path` ("/a/b/c" creates /a and /a/b).
void create_parent_groups(hid_t file, const std::string& path);

std::vector<hsize_t> to_hsize(const Shape& shape);
Shape dataset_shape(hid_t dataset);

void write_string_attribute(hid_t object, const std::string& name, const std::string& value);
void write_int_attribute(hid_t object, const std::string& name, std::int64_t value);
void write_ints_attribute(hid_t object, const std::string& name, const Shape& values);
std::string read_string_attribute(hid_t object, const std::string& name);
std::int64_t read_int_attribute(hid_t object, const std::string& name);
bool has_attribute(hid_t object, const std::string& name);

// A JSON document stored as a checksummed 1-D uint8 dataset (attributes have no data checksum).
void write_json_dataset(hid_t file, const std::string& path, const nlohmann::json& value);
nlohmann::json read_json_dataset(hid_t file, const std::string& path);

}  // namespace metamorph::checkpoint

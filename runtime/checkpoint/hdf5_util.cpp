#include "runtime/checkpoint/hdf5_util.hpp"

#include <algorithm>
#include <cstring>

#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

QuietHdf5Errors::QuietHdf5Errors() {
  H5Eget_auto2(H5E_DEFAULT, &old_func_, &old_data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

QuietHdf5Errors::~QuietHdf5Errors() {
  H5Eset_auto2(H5E_DEFAULT, old_func_, old_data_);
}

namespace {

herr_t collect_message(unsigned, const H5E_error2_t* error, void* out) {
  auto* messages = static_cast<std::vector<std::string>*>(out);
  if (error->desc != nullptr && *error->desc != '\0') messages->push_back(error->desc);
  return 0;
}

}  // namespace

std::string hdf5_error_text() {
  std::vector<std::string> messages;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_message, &messages);
  H5Eclear2(H5E_DEFAULT);
  if (messages.empty()) return "unknown HDF5 error";
  // The innermost two say what actually went wrong; the outer ones only repeat "can't read".
  std::string text = messages[0];
  if (messages.size() > 1 && messages[1] != messages[0]) text += "; " + messages[1];
  return text;
}

H5Handle file_access_plist() {
  H5Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  MM_ASSERT(fapl.valid());
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
  H5Pset_file_locking(fapl.get(), false, true);
  return fapl;
}

H5Handle create_file(const std::filesystem::path& path) {
  const auto fapl = file_access_plist();
  H5Handle file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  require_h5(file.valid(), "cannot create ", path.string());
  return file;
}

H5Handle open_file(const std::filesystem::path& path, bool writable) {
  require(std::filesystem::exists(path), "missing file ", path.string());
  const auto fapl = file_access_plist();
  H5Handle file(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.get()),
                H5Fclose);
  require_h5(file.valid(), "cannot open ", path.string(), " as HDF5");
  return file;
}

H5Handle open_dataset(hid_t file, const std::string& path) {
  require(link_exists(file, path), "no dataset ", path);
  H5Handle dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
  // Room for a few whole chunks, so a hyperslab read decompresses each chunk once.
  H5Pset_chunk_cache(dapl.get(), 521, std::size_t{32} << 20, 1.0);
  H5Handle dataset(H5Dopen2(file, path.c_str(), dapl.get()), H5Dclose);
  require_h5(dataset.valid(), "cannot open dataset ", path);
  return dataset;
}

bool link_exists(hid_t file, const std::string& path) {
  // H5Lexists needs every parent to exist, so walk the path one component at a time.
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (prefix.empty() || prefix == "/") continue;
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
  }
  return true;
}

void create_parent_groups(hid_t file, const std::string& path) {
  std::size_t pos = 0;
  while ((pos = path.find('/', pos + 1)) != std::string::npos) {
    const std::string prefix = path.substr(0, pos);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) > 0) continue;
    H5Handle group(H5Gcreate2(file, prefix.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                   H5Gclose);
    require_h5(group.valid(), "cannot create group ", prefix);
  }
}

std::vector<hsize_t> to_hsize(const Shape& shape) {
  return std::vector<hsize_t>(shape.begin(), shape.end());
}

Shape dataset_shape(hid_t dataset) {
  H5Handle space(H5Dget_space(dataset), H5Sclose);
  require_h5(space.valid(), "cannot read a dataset's dataspace");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  require_h5(rank >= 0, "cannot read a dataset's rank");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

namespace {

void write_attribute(hid_t object, const std::string& name, hid_t type, hid_t space,
                     const void* data) {
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  H5Handle attribute(H5Acreate2(object, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT),
                     H5Aclose);
  require_h5(attribute.valid() && H5Awrite(attribute.get(), type, data) >= 0,
             "cannot write attribute '", name, "'");
}

H5Handle open_attribute(hid_t object, const std::string& name) {
  require(H5Aexists(object, name.c_str()) > 0, "missing attribute '", name, "'");
  H5Handle attribute(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose);
  require_h5(attribute.valid(), "cannot open attribute '", name, "'");
  return attribute;
}

}  // namespace

void write_string_attribute(hid_t object, const std::string& name, const std::string& value) {
  H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<std::size_t>(value.size(), 1));
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  write_attribute(object, name, type.get(), space.get(), padded.data());
}

void write_int_attribute(hid_t object, const std::string& name, std::int64_t value) {
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  write_attribute(object, name, H5T_STD_I64LE, space.get(), &value);
}

void write_ints_attribute(hid_t object, const std::string& name, const Shape& values) {
  const hsize_t n = values.size();
  H5Handle space(n == 0 ? H5Screate(H5S_NULL) : H5Screate_simple(1, &n, nullptr), H5Sclose);
  write_attribute(object, name, H5T_STD_I64LE, space.get(), values.data());
}

std::string read_string_attribute(hid_t object, const std::string& name) {
  const auto attribute = open_attribute(object, name);
  H5Handle type(H5Aget_type(attribute.get()), H5Tclose);
  require(H5Tget_class(type.get()) == H5T_STRING && !H5Tis_variable_str(type.get()), "attribute '",
          name, "' is not a fixed-length string");
  std::string value(H5Tget_size(type.get()), '\0');
  require_h5(H5Aread(attribute.get(), type.get(), value.data()) >= 0, "cannot read attribute '",
             name, "'");
  value.resize(std::strlen(value.c_str()));
  return value;
}

std::int64_t read_int_attribute(hid_t object, const std::string& name) {
  const auto attribute = open_attribute(object, name);
  std::int64_t value = 0;
  require_h5(H5Aread(attribute.get(), H5T_NATIVE_INT64, &value) >= 0, "cannot read attribute '",
             name, "' as an integer");
  return value;
}

bool has_attribute(hid_t object, const std::string& name) {
  return H5Aexists(object, name.c_str()) > 0;
}

void write_json_dataset(hid_t file, const std::string& path, const nlohmann::json& value) {
  const std::string text = value.dump();
  const hsize_t n = text.size();
  create_parent_groups(file, path);
  H5Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  H5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const hsize_t chunk = std::min<hsize_t>(n, hsize_t{1} << 20);
  H5Pset_chunk(dcpl.get(), 1, &chunk);
  H5Pset_fletcher32(dcpl.get());
  H5Handle dataset(H5Dcreate2(file, path.c_str(), H5T_STD_U8LE, space.get(), H5P_DEFAULT,
                              dcpl.get(), H5P_DEFAULT),
                   H5Dclose);
  require_h5(dataset.valid() && H5Dwrite(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL,
                                         H5P_DEFAULT, text.data()) >= 0,
             "cannot write ", path);
  write_string_attribute(dataset.get(), "content", "application/json");
}

nlohmann::json read_json_dataset(hid_t file, const std::string& path) {
  const auto dataset = open_dataset(file, path);
  const Shape shape = dataset_shape(dataset.get());
  require(shape.size() == 1, "dataset ", path, " is not 1-D");
  std::string text(static_cast<std::size_t>(shape[0]), '\0');
  require_h5(
      H5Dread(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()) >= 0,
      "cannot read ", path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat("dataset ", path, " is not valid JSON (", e.what(), ")"));
  }
}

}  // namespace metamorph::checkpoint

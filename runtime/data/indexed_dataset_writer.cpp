#include "runtime/data/indexed_dataset_writer.hpp"

#include <cstring>
#include <limits>

#include "runtime/core/error.hpp"
#include "runtime/data/indexed_dataset.hpp"

namespace metamorph::data {

namespace {

template <class T>
void append(std::string& bytes, T value) {
  char raw[sizeof(T)];
  std::memcpy(raw, &value, sizeof(T));
  bytes.append(raw, sizeof(T));
}

void write_or_throw(std::ofstream& out, const std::string& bytes, const std::string& path) {
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  require(out.good(), "cannot write ", path, " (disk full?)");
}

}  // namespace

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, std::int64_t vocab_size,
                                           StagedFiles& staging)
    : prefix_(prefix),
      vocab_size_(vocab_size),
      staging_(staging),
      dtype_(best_fitting_dtype(vocab_size)) {
  MM_ASSERT(vocab_size > 0 && vocab_size <= std::numeric_limits<std::int32_t>::max());
  bin_temp_ = staging_.stage(prefix + ".bin").string();
  bin_.open(bin_temp_, std::ios::binary | std::ios::trunc);
  require(bin_.good(), "cannot write ", bin_temp_);
}

void IndexedDatasetWriter::add_sequence(std::span<const std::int32_t> tokens) {
  MM_ASSERT(!finished_);
  MM_ASSERT(tokens.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()));
  std::string bytes;
  bytes.reserve(tokens.size() * element_size(dtype_));
  for (const std::int32_t id : tokens) {
    MM_ASSERT(id >= 0 && id < vocab_size_, "token id ", id, " outside the vocabulary ",
              vocab_size_);
    if (dtype_ == DType::kUInt16)
      append(bytes, static_cast<std::uint16_t>(id));
    else
      append(bytes, id);
  }
  write_or_throw(bin_, bytes, bin_temp_);
  lengths_.push_back(static_cast<std::int32_t>(tokens.size()));
  num_tokens_ += static_cast<std::int64_t>(tokens.size());
}

void IndexedDatasetWriter::end_document() {
  documents_.push_back(static_cast<std::int64_t>(lengths_.size()));
}

void IndexedDatasetWriter::add_document(std::span<const std::int32_t> tokens) {
  add_sequence(tokens);
  end_document();
}

void IndexedDatasetWriter::finish() {
  MM_ASSERT(!finished_);
  // Sequences added after the last end_document still need a closing document entry.
  if (documents_.back() != static_cast<std::int64_t>(lengths_.size())) end_document();
  bin_.close();
  require(!bin_.fail(), "cannot finish writing ", bin_temp_, " (disk full?)");

  std::string index;
  index.append(kIndexMagic, sizeof(kIndexMagic));
  append(index, kIndexVersion);
  append(index, static_cast<std::uint8_t>(dtype_));
  append(index, static_cast<std::uint64_t>(lengths_.size()));
  append(index, static_cast<std::uint64_t>(documents_.size()));
  for (const std::int32_t length : lengths_) append(index, length);
  std::int64_t offset = 0;
  const auto element = static_cast<std::int64_t>(element_size(dtype_));
  for (const std::int32_t length : lengths_) {
    append(index, offset);
    offset += length * element;
  }
  for (const std::int64_t start : documents_) append(index, start);

  const std::string idx_temp = staging_.stage(prefix_ + ".idx").string();
  std::ofstream idx(idx_temp, std::ios::binary | std::ios::trunc);
  write_or_throw(idx, index, idx_temp);
  idx.close();
  require(!idx.fail(), "cannot finish writing ", idx_temp, " (disk full?)");
  finished_ = true;
}

void write_indexed_dataset(const std::string& prefix, std::int64_t vocab_size,
                           const std::vector<std::vector<std::int32_t>>& documents) {
  StagedFiles staging;
  IndexedDatasetWriter writer(prefix, vocab_size, staging);
  for (const auto& document : documents) writer.add_document(document);
  writer.finish();
  staging.commit();
}

}  // namespace metamorph::data

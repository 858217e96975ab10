#include "runtime/data/indexed_dataset.hpp"

#include <bit>
#include <cstring>
#include <limits>

#include "runtime/core/error.hpp"

namespace metamorph::data {

static_assert(std::endian::native == std::endian::little,
              "the MMIDIDX format is little-endian; add byte swapping for this host");

namespace {

// The arrays sit at odd offsets (the header is 34 bytes), so read through memcpy.
template <class T>
T load(const unsigned char* at) {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

template <class T>
void widen(const unsigned char* bytes, std::int64_t count, std::int32_t* out,
           const std::string& file, std::int64_t first) {
  for (std::int64_t i = 0; i < count; ++i) {
    const T value = load<T>(bytes + i * static_cast<std::int64_t>(sizeof(T)));
    if constexpr (std::is_signed_v<T>) {
      require(value >= 0, file, ": token ", first + i, " has the negative id ",
              static_cast<std::int64_t>(value));
    }
    if constexpr (sizeof(T) > 4 || std::is_same_v<T, std::uint32_t>) {
      require(value <= std::numeric_limits<std::int32_t>::max(), file, ": token ", first + i,
              " has the id ", static_cast<std::int64_t>(value), ", beyond int32");
    }
    out[i] = static_cast<std::int32_t>(value);
  }
}

}  // namespace

IndexedDataset::IndexedDataset(const std::string& prefix)
    : prefix_(prefix), index_(prefix + ".idx"), bin_(prefix + ".bin") {
  const std::string& idx = index_.path();
  const unsigned char* data = index_.data();
  const std::size_t size = index_.size();
  require(size >= 9 && std::memcmp(data, kIndexMagic, 9) == 0, idx,
          " is not a Megatron indexed dataset index: it does not start with the magic "
          "\"MMIDIDX\\0\\0\"");
  require(size >= kIndexHeaderBytes, idx, " is truncated: ", size,
          " bytes, but the header alone is ", kIndexHeaderBytes);
  const auto version = load<std::uint64_t>(data + 9);
  require(version == kIndexVersion, idx, ": unsupported index version ", version,
          " (this reader knows version ", kIndexVersion, ")");
  const std::uint8_t code = data[17];
  const auto dtype = dtype_from_code(code);
  require(dtype.has_value(), idx, ": unknown dtype code ", static_cast<int>(code),
          " (valid codes are 1 to 8)");
  require(is_integer(*dtype), idx, ": dtype ", dtype_name(*dtype), " (code ",
          static_cast<int>(code), ") cannot hold token ids; expected an integer type");
  dtype_ = *dtype;
  const auto sequences = load<std::uint64_t>(data + 18);
  const auto document_entries = load<std::uint64_t>(data + 26);
  const std::size_t body = size - kIndexHeaderBytes;
  // Compare counts with the file size before multiplying so a foreign file cannot overflow.
  require(sequences <= body / 12 && document_entries <= body / 8, idx, " is truncated: it claims ",
          sequences, " sequences and ", document_entries, " document entries but has only ", size,
          " bytes");
  const std::size_t expected = kIndexHeaderBytes + sequences * 12 + document_entries * 8;
  require(size >= expected, idx, " is truncated: ", size, " bytes, expected ", expected, " for ",
          sequences, " sequences and ", document_entries, " document entries");
  require(size == expected, idx, " has ", size - expected, " unexpected bytes after its ", expected,
          "-byte index");
  require(document_entries >= 1, idx,
          ": the document index is empty; it must hold at least the leading 0");
  num_sequences_ = static_cast<std::int64_t>(sequences);
  num_document_entries_ = static_cast<std::int64_t>(document_entries);
  lengths_at_ = kIndexHeaderBytes;
  offsets_at_ = lengths_at_ + sequences * 4;
  documents_at_ = offsets_at_ + sequences * 8;
  num_tokens_ = validate();
}

std::int64_t IndexedDataset::validate() const {
  const std::string& idx = index_.path();
  const auto element = static_cast<std::int64_t>(element_size(dtype_));
  std::int64_t expected_offset = 0;
  for (std::int64_t s = 0; s < num_sequences_; ++s) {
    const std::int32_t length = sequence_length(s);
    require(length >= 0, idx, ": sequence ", s, " has the negative length ", length);
    const std::int64_t offset = sequence_byte_offset(s);
    require(offset == expected_offset, idx, ": sequence ", s, " starts at byte ", offset,
            " of the .bin, expected ", expected_offset,
            " (sequences must lie back to back in order)");
    expected_offset += length * element;
  }
  const auto bin_size = static_cast<std::int64_t>(bin_.size());
  require(bin_size >= expected_offset, bin_.path(), " is truncated: ", bin_size,
          " bytes, but the index describes ", expected_offset);
  require(bin_size == expected_offset, bin_.path(), " has ", bin_size - expected_offset,
          " bytes beyond the ", expected_offset, " the index describes");
  require(document_start(0) == 0, idx, ": the document index must start at 0, found ",
          document_start(0));
  for (std::int64_t d = 1; d < num_document_entries_; ++d) {
    require(document_start(d) >= document_start(d - 1), idx, ": document index entry ", d, " (",
            document_start(d), ") is below entry ", d - 1, " (", document_start(d - 1),
            "); entries must not decrease");
  }
  const std::int64_t last = document_start(num_document_entries_ - 1);
  require(last == num_sequences_, idx, ": the document index must end at the sequence count ",
          num_sequences_, ", found ", last);
  return expected_offset / element;
}

std::int32_t IndexedDataset::sequence_length(std::int64_t sequence) const {
  MM_ASSERT(sequence >= 0 && sequence < num_sequences_);
  return load<std::int32_t>(index_.data() + lengths_at_ + sequence * 4);
}

std::int64_t IndexedDataset::sequence_byte_offset(std::int64_t sequence) const {
  MM_ASSERT(sequence >= 0 && sequence < num_sequences_);
  return load<std::int64_t>(index_.data() + offsets_at_ + sequence * 8);
}

std::int64_t IndexedDataset::document_start(std::int64_t document) const {
  MM_ASSERT(document >= 0 && document < num_document_entries_);
  return load<std::int64_t>(index_.data() + documents_at_ + document * 8);
}

std::int64_t IndexedDataset::document_first_token(std::int64_t document) const {
  const std::int64_t sequence = document_start(document);
  if (sequence == num_sequences_) return num_tokens_;
  return sequence_byte_offset(sequence) / static_cast<std::int64_t>(element_size(dtype_));
}

std::int64_t IndexedDataset::document_length(std::int64_t document) const {
  MM_ASSERT(document >= 0 && document < num_documents());
  return document_first_token(document + 1) - document_first_token(document);
}

void IndexedDataset::read_tokens(std::int64_t first, std::int64_t count, std::int32_t* out) const {
  MM_ASSERT(first >= 0 && count >= 0 && first + count <= num_tokens_);
  const auto element = static_cast<std::int64_t>(element_size(dtype_));
  const unsigned char* bytes = bin_.data() + first * element;
  const std::string& file = bin_.path();
  switch (dtype_) {
    case DType::kUInt8:
      return widen<std::uint8_t>(bytes, count, out, file, first);
    case DType::kInt8:
      return widen<std::int8_t>(bytes, count, out, file, first);
    case DType::kInt16:
      return widen<std::int16_t>(bytes, count, out, file, first);
    case DType::kUInt16:
      return widen<std::uint16_t>(bytes, count, out, file, first);
    case DType::kInt32:
      return widen<std::int32_t>(bytes, count, out, file, first);
    case DType::kInt64:
      return widen<std::int64_t>(bytes, count, out, file, first);
    case DType::kFloat32:
    case DType::kFloat64:
      break;
  }
  MM_ASSERT(false, "float dtypes are rejected on open");
}

std::vector<std::int32_t> IndexedDataset::sequence(std::int64_t sequence) const {
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(sequence_length(sequence)));
  read_tokens(sequence_byte_offset(sequence) / static_cast<std::int64_t>(element_size(dtype_)),
              static_cast<std::int64_t>(tokens.size()), tokens.data());
  return tokens;
}

std::vector<std::int32_t> IndexedDataset::document(std::int64_t document) const {
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(document_length(document)));
  read_tokens(document_first_token(document), static_cast<std::int64_t>(tokens.size()),
              tokens.data());
  return tokens;
}

}  // namespace metamorph::data

// The safetensors file format (Hugging Face): u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}, then the
// data buffer, which the tensors index entirely, without holes or overlaps.
//
// Reading maps the file (mmap) and validates everything before any tensor is used; every problem comes
// back as one line naming the file, the tensor and what is wrong. Writing goes to a temporary name that
// is renamed over the target on success, so a crash never leaves a half-written file under the real name.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace rlhf::model {

enum class StDType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };
const char* StDTypeName(StDType t);  // "F32", ...
size_t StDTypeSize(StDType t);
absl::StatusOr<StDType> ParseStDType(const std::string& name);

struct TensorInfo {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets within the data buffer
  uint64_t end = 0;
  int64_t numel() const;
};

// A validated, memory-mapped safetensors file. Immutable; safe to read from several threads.
class SafetensorsFile {
 public:
  // Opens, maps and validates `path`. NOT_FOUND when it does not exist; DATA_LOSS when it is truncated or
  // its header is inconsistent with the data; INVALID_ARGUMENT for malformed headers or unknown dtypes.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const TensorInfo* Find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Bytes of a tensor inside the mapping; valid while this object lives. Not necessarily aligned.
  const uint8_t* Data(const TensorInfo& t) const { return data_ + t.begin; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel * size(dtype) bytes, little-endian row-major; not owned
};

// Writes a safetensors file (tensors in the given order, __metadata__ = metadata) to `path` via a
// temporary file and a rename. INVALID_ARGUMENT on duplicate names; UNAVAILABLE/DATA_LOSS on I/O errors.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace rlhf::model

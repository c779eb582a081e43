#include "common/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_join.h"
#include "common/file.h"

namespace rlhf::model {

using nlohmann::json;

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // same limit as the reference implementation
}

const char* StDTypeName(StDType t) {
  switch (t) {
    case StDType::kF64: return "F64";
    case StDType::kF32: return "F32";
    case StDType::kF16: return "F16";
    case StDType::kBF16: return "BF16";
    case StDType::kI64: return "I64";
    case StDType::kI32: return "I32";
    case StDType::kI16: return "I16";
    case StDType::kI8: return "I8";
    case StDType::kU8: return "U8";
    case StDType::kBool: return "BOOL";
  }
  return "?";
}

size_t StDTypeSize(StDType t) {
  switch (t) {
    case StDType::kF64:
    case StDType::kI64: return 8;
    case StDType::kF32:
    case StDType::kI32: return 4;
    case StDType::kF16:
    case StDType::kBF16:
    case StDType::kI16: return 2;
    case StDType::kI8:
    case StDType::kU8:
    case StDType::kBool: return 1;
  }
  return 0;
}

absl::StatusOr<StDType> ParseStDType(const std::string& name) {
  for (StDType t : {StDType::kF64, StDType::kF32, StDType::kF16, StDType::kBF16, StDType::kI64, StDType::kI32,
                    StDType::kI16, StDType::kI8, StDType::kU8, StDType::kBool}) {
    if (name == StDTypeName(t)) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", name, "'"));
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr && map_ != MAP_FAILED) munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto fail = [&](absl::StatusCode code, const std::string& what) {
    return absl::Status(code, absl::StrCat(path, ": ", what));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return fail(absl::StatusCode::kNotFound, "no such file");
    return FileError(errno, "open", path);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return FileError(err, "stat", path);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return fail(absl::StatusCode::kDataLoss,
                absl::StrCat("file is ", size, " bytes, too short for the 8-byte header length: truncated?"));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_size_ = size;
  f->map_ = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (f->map_ == MAP_FAILED) return FileError(errno, "map", path);
  const auto* bytes = static_cast<const uint8_t*>(f->map_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeader) {
    return fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("header length ", n, " is over the 100 MiB limit: not a safetensors file?"));
  }
  if (8 + n > size) {
    return fail(absl::StatusCode::kDataLoss, absl::StrCat("header length ", n, " goes past the end of the file (",
                                                          size, " bytes): truncated or not safetensors"));
  }
  json header = json::parse(bytes + 8, bytes + 8 + n, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return fail(absl::StatusCode::kInvalidArgument, "header is not a JSON object: not a safetensors file?");
  }
  f->data_ = bytes + 8 + n;
  const uint64_t data_size = size - 8 - n;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) return fail(absl::StatusCode::kInvalidArgument, "__metadata__ is not an object");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string()) {
          return fail(absl::StatusCode::kInvalidArgument, absl::StrCat("__metadata__ value '", k, "' is not a string"));
        }
        f->metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) {
      return fail(absl::StatusCode::kInvalidArgument, absl::StrCat("tensor '", name, "': ", what));
    };
    if (!v.is_object()) return bad("entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) return bad("missing dtype");
    auto dt = ParseStDType(v["dtype"].get<std::string>());
    if (!dt.ok()) return bad(std::string(dt.status().message()));
    TensorInfo t;
    t.name = name;
    t.dtype = *dt;
    if (!v.contains("shape") || !v["shape"].is_array()) return bad("missing shape");
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("shape must hold non-negative integers");
      t.shape.push_back(d.get<int64_t>());
    }
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2 ||
        !v["data_offsets"][0].is_number_unsigned() || !v["data_offsets"][1].is_number_unsigned()) {
      return bad("data_offsets must be [begin, end]");
    }
    t.begin = v["data_offsets"][0].get<uint64_t>();
    t.end = v["data_offsets"][1].get<uint64_t>();
    if (t.end < t.begin) return bad(absl::StrCat("data_offsets [", t.begin, ", ", t.end, "] end before they begin"));
    if (t.end > data_size) {
      return fail(absl::StatusCode::kDataLoss,
                  absl::StrCat("tensor '", name, "': data_offsets [", t.begin, ", ", t.end,
                               "] are outside the data (", data_size, " bytes): truncated file?"));
    }
    const uint64_t need = static_cast<uint64_t>(t.numel()) * StDTypeSize(t.dtype);
    if (need != t.end - t.begin) {
      return bad(absl::StrCat("shape [", absl::StrJoin(t.shape, ", "), "] of ", StDTypeName(t.dtype), " needs ", need,
                              " bytes but data_offsets span ", t.end - t.begin));
    }
    f->index_[name] = f->tensors_.size();
    f->tensors_.push_back(std::move(t));
  }
  // The buffer must be indexed entirely: no overlaps, no holes.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : f->tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin < cursor) {
      return fail(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("tensor '", t->name, "': data_offsets [", t->begin, ", ", t->end, "] overlap tensor '",
                               prev->name, "'"));
    }
    if (t->begin > cursor) {
      return fail(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("tensor '", t->name, "': bytes ", cursor, "..", t->begin,
                               " of the data buffer belong to no tensor"));
    }
    cursor = t->end;
    prev = t;
  }
  if (cursor != data_size) {
    return fail(absl::StatusCode::kDataLoss, absl::StrCat("the tensors cover ", cursor, " bytes but the data buffer has ",
                                                          data_size, ": damaged or padded file"));
  }
  return f;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (header.contains(t.name)) return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    uint64_t bytes = static_cast<uint64_t>(numel) * StDTypeSize(t.dtype);
    header[t.name] = {{"dtype", StDTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  // Written whole or not at all (common/file.h).
  return WriteFileAtomic(path, [&](FileSink& out) -> absl::Status {
    uint8_t len[8];
    const uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    RETURN_IF_ERROR(out.Write(len, 8));
    RETURN_IF_ERROR(out.Write(h));
    for (const auto& t : tensors) {
      int64_t numel = 1;
      for (int64_t d : t.shape) numel *= d;
      const size_t bytes = static_cast<size_t>(numel) * StDTypeSize(t.dtype);
      if (bytes > 0) RETURN_IF_ERROR(out.Write(t.data, bytes));
    }
    return absl::OkStatus();
  });
}

}  // namespace rlhf::model

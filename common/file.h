// Files that are written whole or not at all, and file errors with the codes of common/status.h.
//
// WriteFileAtomic writes to a temporary name beside the target (unique per process and call), fsyncs it,
// renames it over the target and fsyncs the folder: a reader sees the old file or the new one, never a
// part, also after a crash or power loss. Every error is returned (a full disk included), the temporary
// file is removed, and the target is left as it was.
// Error codes (never UNAVAILABLE, which means "retry the call"): NOT_FOUND (no such file or folder),
// PERMISSION_DENIED (also a read-only file system), RESOURCE_EXHAUSTED (disk full, quota, file too large),
// ALREADY_EXISTS, INVALID_ARGUMENT (a folder where a file is meant, a name too long), DATA_LOSS (an I/O
// error of the device), else INTERNAL. Messages name the path and the system's reason.
// Thread-safety: the functions are safe to call concurrently (on different targets).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include "absl/strings/string_view.h"

#include "common/status.h"

namespace rlhf {

// The Status of a failed file operation `what` ("create", "write", "rename" ...) on `path`, from errno `err`.
absl::Status FileError(int err, absl::string_view what, absl::string_view path);

// A buffered writer into an open file, handed to WriteFileAtomic's `fill`.
class FileSink {
 public:
  FileSink(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;
  absl::Status Write(const void* data, size_t size);
  absl::Status Write(absl::string_view text) { return Write(text.data(), text.size()); }
  absl::Status Flush();  // every byte written so far reaches the file (not yet the disk)

 private:
  int fd_;
  std::string path_;
  std::string buffer_;
};

// Writes `path` with what `fill` writes into the sink (a failed `fill` leaves the target untouched).
absl::Status WriteFileAtomic(const std::string& path, const std::function<absl::Status(FileSink&)>& fill);
// Writes `path` with `bytes`.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view bytes);

// The whole file. NOT_FOUND when it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// fsyncs a folder, so that the renames and creations inside it survive a crash.
absl::Status SyncFolder(const std::string& dir);

}  // namespace rlhf

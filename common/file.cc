#include "common/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace rlhf {

namespace {

constexpr size_t kBufferBytes = 1 << 20;

absl::StatusCode FileCode(int err) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::StatusCode::kNotFound;
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::StatusCode::kPermissionDenied;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case EMFILE:
    case ENFILE:
      return absl::StatusCode::kResourceExhausted;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case EISDIR:
    case ENAMETOOLONG:
    case EINVAL:
      return absl::StatusCode::kInvalidArgument;
    case EIO:
      return absl::StatusCode::kDataLoss;
    default:
      return absl::StatusCode::kInternal;
  }
}

std::string FolderOf(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

}  // namespace

absl::Status FileError(int err, absl::string_view what, absl::string_view path) {
  std::string hint;
  if (err == ENOSPC || err == EDQUOT) hint = " (free some space, or write elsewhere)";
  if (err == EACCES || err == EPERM || err == EROFS) hint = " (check the folder's owner and permissions)";
  return absl::Status(FileCode(err), absl::StrCat("cannot ", what, " ", path, ": ", std::strerror(err), hint));
}

namespace {
// Writes all of [data, data + size) to fd.
absl::Status WriteAll(int fd, const char* data, size_t size, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return FileError(errno, "write", path);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status FileSink::Flush() {
  RETURN_IF_ERROR(WriteAll(fd_, buffer_.data(), buffer_.size(), path_));
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status FileSink::Write(const void* data, size_t size) {
  if (buffer_.size() + size > kBufferBytes) RETURN_IF_ERROR(Flush());
  if (size >= kBufferBytes) return WriteAll(fd_, static_cast<const char*>(data), size, path_);  // large blocks go straight through
  buffer_.append(static_cast<const char*>(data), size);
  return absl::OkStatus();
}

absl::Status SyncFolder(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return FileError(errno, "open the folder", dir);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot fsync a folder (EINVAL): their renames are as durable as they get.
  if (rc != 0 && err != EINVAL) return FileError(err, "fsync the folder", dir);
  return absl::OkStatus();
}

absl::Status WriteFileAtomic(const std::string& path, const std::function<absl::Status(FileSink&)>& fill) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return FileError(errno, "create", tmp);
  absl::Status st;
  {
    FileSink sink(fd, tmp);
    st = fill(sink);
    if (st.ok()) st = sink.Flush();
  }
  if (st.ok() && ::fsync(fd) != 0) st = FileError(errno, "fsync", tmp);
  if (::close(fd) != 0 && st.ok()) st = FileError(errno, "close", tmp);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = FileError(errno, "rename the new file to", path);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return SyncFolder(FolderOf(path));
}

absl::Status WriteFileAtomic(const std::string& path, absl::string_view bytes) {
  return WriteFileAtomic(path, [&](FileSink& sink) { return sink.Write(bytes); });
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return FileError(errno, "open", path);
  std::string out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return FileError(err, "read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

}  // namespace rlhf

#include "services/scoring/sandbox.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file.h"

namespace rlhf::scoring {

namespace fs = std::filesystem;

namespace {

constexpr uid_t kNobody = 65534;

std::atomic<UnshareFn> g_unshare{nullptr};  // null: the system call

// What the child needs, prepared before fork: after fork in a multi-threaded process only async-signal-safe
// calls are made (no allocation), so the child cannot deadlock on a lock another thread held.
struct ChildPlan {
  int err_fd = -1;
  const char* scratch = nullptr;
  const char* output = nullptr;
  const char* command = nullptr;
  const char* const* env = nullptr;
  // The child's end of a socket pair (not pipes: the parent sends with MSG_NOSIGNAL, so a child that died
  // before reading costs EPIPE, never a SIGPIPE that kills the caller's process). Child -> parent 'r': the
  // user namespace exists, write its id maps; parent -> child 'g': they are written ('x': they could not be).
  int sync_fd = -1;
  UnshareFn unshare_fn = ::unshare;
  SandboxLimits limits;
};

// Reports a setup failure through the pipe and exits.
[[noreturn]] void Fail(int fd, const char* what) {
  const int e = errno;
  (void)!write(fd, what, strlen(what));
  const char* sep = ": ";
  (void)!write(fd, sep, 2);
  const char* msg = strerror(e);
  (void)!write(fd, msg, strlen(msg));
  _exit(125);
}

bool WriteProc(const char* path, const char* text) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return false;
  const ssize_t len = static_cast<ssize_t>(strlen(text));
  const bool ok = write(fd, text, static_cast<size_t>(len)) == len;
  close(fd);
  return ok;
}

// Remounts every mount point of the new mount namespace read-only, except `keep`. Mount points come from
// /proc/self/mountinfo (5th field), read into a stack buffer.
void RemountAllReadOnly(int err_fd, const char* keep) {
  static char buf[1 << 18];
  int fd = open("/proc/self/mountinfo", O_RDONLY);
  if (fd < 0) Fail(err_fd, "open /proc/self/mountinfo");
  size_t len = 0;
  ssize_t n;
  while (len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0) len += static_cast<size_t>(n);
  close(fd);
  buf[len] = 0;
  char* line = buf;
  while (line < buf + len) {
    char* end = strchr(line, '\n');
    if (end) *end = 0;
    // Fields: id parent major:minor root mount-point ...
    char* field = line;
    for (int i = 0; i < 4 && field; ++i) {
      field = strchr(field, ' ');
      if (field) ++field;
    }
    if (field) {
      char* sp = strchr(field, ' ');
      if (sp) *sp = 0;
      if (strcmp(field, keep) != 0) {
        // Keep the flags the parent namespace locked (nosuid, nodev, noexec): try the combinations.
        static const unsigned long kExtra[] = {0, MS_NOSUID | MS_NODEV, MS_NOSUID | MS_NODEV | MS_NOEXEC, MS_NOSUID,
                                               MS_NODEV, MS_NOSUID | MS_NOEXEC, MS_NODEV | MS_NOEXEC, MS_NOEXEC};
        bool done = false;
        for (unsigned long extra : kExtra) {
          if (mount(nullptr, field, nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | extra, nullptr) == 0) {
            done = true;
            break;
          }
        }
        if (!done && errno != ENOENT && errno != EINVAL) Fail(err_fd, "remount read-only");
      }
    }
    if (!end) break;
    line = end + 1;
  }
}

// The namespace owner: new user (root inside = nobody outside), net, mount, pid, ipc and uts namespaces;
// read-only mounts but the scratch directory; then the command as pid 1 of the new pid namespace.
[[noreturn]] void Child(const ChildPlan& p) {
  const int e = p.err_fd;
  if (p.unshare_fn(CLONE_NEWUSER) != 0) Fail(e, "unshare(user namespace)");
  // Only a process of the parent namespace may map root inside to "nobody" outside: ask the parent.
  char c = 0;
  if (send(p.sync_fd, "r", 1, MSG_NOSIGNAL) != 1 || read(p.sync_fd, &c, 1) != 1 || c != 'g') {
    errno = EPERM;
    Fail(e, "map the sandbox user (uid_map / gid_map)");
  }
  if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) Fail(e, "become the namespace's root");
  if (p.unshare_fn(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS) != 0) {
    Fail(e, "unshare(net, mount, pid namespaces)");
  }
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) Fail(e, "make mounts private");
  if (mount(p.scratch, p.scratch, nullptr, MS_BIND, nullptr) != 0) Fail(e, "bind the scratch directory");
  RemountAllReadOnly(e, p.scratch);
  pid_t init = fork();
  if (init < 0) Fail(e, "fork");
  if (init > 0) {  // pass the status of the namespace's init on
    int status = 0;
    while (waitpid(init, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) {
      signal(WTERMSIG(status), SIG_DFL);
      kill(getpid(), WTERMSIG(status));
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 125);
  }
  // pid 1 of the new namespace: when it ends, every process it started ends too.
  auto limit = [&](int res, rlim_t v) {
    struct rlimit r {
      v, v
    };
    if (setrlimit(res, &r) != 0) Fail(e, "setrlimit");
  };
  limit(RLIMIT_CPU, static_cast<rlim_t>(p.limits.cpu_seconds));
  limit(RLIMIT_AS, static_cast<rlim_t>(p.limits.memory_mb) << 20);
  limit(RLIMIT_FSIZE, static_cast<rlim_t>(p.limits.file_mb) << 20);
  limit(RLIMIT_NPROC, static_cast<rlim_t>(p.limits.max_processes));
  limit(RLIMIT_NOFILE, 64);
  limit(RLIMIT_CORE, 0);
  if (chdir(p.scratch) != 0) Fail(e, "chdir scratch");
  int out = open(p.output, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (out < 0) Fail(e, "open the output file");
  dup2(out, 1);
  dup2(out, 2);
  close(out);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, 0);
  execle("/bin/sh", "sh", "-c", p.command, static_cast<char*>(nullptr), const_cast<char* const*>(p.env));
  Fail(e, "exec /bin/sh");
}

}  // namespace

absl::StatusOr<SandboxResult> RunSandboxed(const std::string& command, const std::map<std::string, std::string>& files,
                                           const SandboxLimits& limits) {
  char tmpl[] = "/tmp/rlhf-sandbox-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return FileError(errno, "create the scratch directory", tmpl);
  const std::string scratch = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{scratch};
  for (const auto& [name, content] : files) {
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
      return absl::InvalidArgumentError(absl::StrCat("sandbox file name '", name, "' must be a plain name"));
    }
    RETURN_IF_ERROR(WriteFileAtomic(scratch + "/" + name, content));
  }
  // The sandbox user owns the scratch directory (and nothing else).
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(scratch, ec)) (void)!chown(e.path().c_str(), kNobody, kNobody);
  if (chown(scratch.c_str(), kNobody, kNobody) != 0 && geteuid() == 0) {
    return FileError(errno, "give the sandbox user", scratch);
  }
  chmod(scratch.c_str(), 0700);

  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return absl::UnavailableError("pipe");
  const std::string output = scratch + "/.output", home = "HOME=" + scratch;
  // The id-map handshake: sock[0] stays with the parent, sock[1] goes to the child.
  int sock[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock) != 0) {
    close(pipefd[0]);
    close(pipefd[1]);
    return absl::UnavailableError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  const char* env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", home.c_str(), "LANG=C.UTF-8", nullptr};
  ChildPlan plan;
  plan.err_fd = pipefd[1];
  plan.scratch = scratch.c_str();
  plan.output = output.c_str();
  plan.command = command.c_str();
  plan.env = env;
  plan.sync_fd = sock[1];
  if (UnshareFn fn = g_unshare.load()) plan.unshare_fn = fn;
  plan.limits = limits;
  pid_t pid = fork();
  if (pid < 0) {
    const int e = errno;
    for (int fd : {pipefd[0], pipefd[1], sock[0], sock[1]}) close(fd);
    return absl::UnavailableError(absl::StrCat("fork: ", std::strerror(e)));
  }
  if (pid == 0) {
    close(pipefd[0]);
    close(sock[0]);
    setpgid(0, 0);
    Child(plan);
  }
  close(pipefd[1]);
  close(sock[1]);
  setpgid(pid, pid);
  {
    // The child's user namespace exists: map its root to nobody (uid and gid 65534). A child that failed
    // before (no user namespace here) has closed its end: read sees EOF and the send fails with EPIPE.
    char c = 0;
    bool mapped = false;
    if (read(sock[0], &c, 1) == 1) {
      const std::string base = "/proc/" + std::to_string(pid);
      const std::string map = absl::StrCat("0 ", kNobody, " 1\n");
      mapped = WriteProc((base + "/setgroups").c_str(), "deny") && WriteProc((base + "/uid_map").c_str(), map.c_str()) &&
               WriteProc((base + "/gid_map").c_str(), map.c_str());
    }
    (void)!send(sock[0], mapped ? "g" : "x", 1, MSG_NOSIGNAL);
    close(sock[0]);
  }
  SandboxResult r;
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(limits.wall_seconds);
  while (true) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      r.timed_out = true;
      kill(-pid, SIGKILL);  // the process group: the namespace owner and its pid-1 child
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  char buf[512];
  std::string err;
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) err.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  if (!err.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("the code sandbox cannot isolate the command (", err,
                                                      "); refusing to run it unconfined"));
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  std::ifstream out(scratch + "/.output", std::ios::binary);
  std::stringstream ss;
  ss << out.rdbuf();
  r.output = ss.str();
  if (static_cast<int64_t>(r.output.size()) > limits.max_output_bytes) {
    r.output = r.output.substr(r.output.size() - static_cast<size_t>(limits.max_output_bytes));
  }
  return r;
}

UnshareFn SetSandboxUnshareForTesting(UnshareFn fn) { return g_unshare.exchange(fn); }

}  // namespace rlhf::scoring

#include "services/scoring/sandbox.h"

#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file.h"

namespace rlhf::scoring {

namespace fs = std::filesystem;

namespace {

constexpr uid_t kNobody = 65534;
constexpr char kScratchInside[] = "/sandbox";  // where the scratch directory is inside the sandbox

// The system-call filter (seccomp BPF): calls a solution has no use for fail with EPERM (so that programs
// report an error rather than die): tracing and reading other processes, mounts and namespaces, kernel
// keys, BPF, perf, io_uring, modules, clocks, reboot; sockets other than Unix ones; clone with namespace
// flags (clone3, whose flags the filter cannot read, fails with ENOSYS so that libc falls back to clone).
// Another architecture's system calls (and x86's x32 ABI) kill the process.
const sock_fprog* SeccompFilter() {
  static const std::vector<sock_filter>* program = [] {
    auto* f = new std::vector<sock_filter>;
    auto add = [&](sock_filter x) { f->push_back(x); };
    const uint32_t kErrno = SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA);
#if defined(__x86_64__)
    const uint32_t arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    const uint32_t arch = AUDIT_ARCH_AARCH64;
#else
#error "the sandbox's system-call filter knows x86_64 and aarch64"
#endif
    add(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
    add(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0));
    add(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    add(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
#if defined(__x86_64__)
    add(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));  // the x32 ABI
    add(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
#endif
    const long denied[] = {
      SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_mount, SYS_umount2, SYS_pivot_root,
      SYS_chroot, SYS_unshare, SYS_setns, SYS_keyctl, SYS_add_key, SYS_request_key, SYS_bpf, SYS_perf_event_open,
      SYS_userfaultfd, SYS_kexec_load, SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_reboot,
      SYS_swapon, SYS_swapoff, SYS_acct, SYS_settimeofday, SYS_clock_settime, SYS_clock_adjtime, SYS_adjtimex,
      SYS_open_by_handle_at, SYS_name_to_handle_at, SYS_quotactl, SYS_syslog, SYS_vhangup, SYS_fanotify_init,
#ifdef SYS_kexec_file_load
      SYS_kexec_file_load,
#endif
#ifdef SYS_io_uring_setup
      SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
#endif
#ifdef SYS_fsopen
      SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick, SYS_move_mount, SYS_open_tree,
#endif
#if defined(__x86_64__)
      SYS_iopl, SYS_ioperm,
#endif
    };
    for (long nr : denied) {
      add(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), 0, 1));
      add(BPF_STMT(BPF_RET | BPF_K, kErrno));
    }
#ifdef SYS_clone3
    add(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1));
    add(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)));
#endif
    // clone(flags, ...): no new namespaces (the flags are the first argument on both architectures).
    const uint32_t ns = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                        CLONE_NEWCGROUP;
    add(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 4));
    add(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])));
    add(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, ns, 0, 1));
    add(BPF_STMT(BPF_RET | BPF_K, kErrno));
    add(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    // socket(domain, ...): Unix sockets only.
    add(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 0, 3));
    add(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])));
    add(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 1, 0));
    add(BPF_STMT(BPF_RET | BPF_K, kErrno));
    add(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    return f;
  }();
  static const sock_fprog prog{static_cast<unsigned short>(program->size()), const_cast<sock_filter*>(program->data())};
  return &prog;
}

std::atomic<UnshareFn> g_unshare{nullptr};  // null: the system call

// One thing the sandbox's root holds, prepared before fork: a read-only bind of a host folder or file it
// needs (the programs and libraries under /usr, a few device nodes), a symbolic link (/bin -> usr/bin), an
// empty folder (a mount point or /proc), or the scratch directory (read-write).
struct RootEntry {
  enum Kind { kBindDir, kBindFile, kSymlink, kDir, kScratch, kProc } kind;
  std::string source;  // host path (binds), link target (symlinks)
  std::string target;  // path under the new root
};

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
  // The sandbox's own root: an empty directory where a tmpfs is mounted and filled with `mounts`.
  const char* root = nullptr;
  const RootEntry* entries = nullptr;
  size_t n_entries = 0;
  const sock_fprog* seccomp = nullptr;
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

// Writes `text` to a kernel file (/proc, cgroupfs) in one write; `path` is relative to `dir` when it is not
// absolute. Async-signal-safe.
bool WriteProc(const char* path, const char* text, int dir = AT_FDCWD) {
  int fd = openat(dir, path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t len = static_cast<ssize_t>(strlen(text));
  const bool ok = write(fd, text, static_cast<size_t>(len)) == len;
  close(fd);
  return ok;
}

// Makes the mount at `path` read-only, keeping the flags the parent namespace locked (nosuid, nodev,
// noexec): the kernel refuses a remount that would drop one, so the combinations are tried.
bool RemountReadOnly(const char* path, unsigned long more = 0) {
  static const unsigned long kExtra[] = {0, MS_NOSUID | MS_NODEV, MS_NOSUID | MS_NODEV | MS_NOEXEC, MS_NOSUID,
                                         MS_NODEV, MS_NOSUID | MS_NOEXEC, MS_NODEV | MS_NOEXEC, MS_NOEXEC};
  for (unsigned long extra : kExtra) {
    if (mount(nullptr, path, nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | more | extra, nullptr) == 0) return true;
  }
  return false;
}

// Builds the sandbox's root under p.root (a fresh tmpfs, then the entries) and makes it the root: no host file
// is reachable but the read-only folders the command needs. Runs as root of the first user namespace.
void BuildRoot(const ChildPlan& p) {
  const int e = p.err_fd;
  if (mount("tmpfs", p.root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755") != 0) Fail(e, "mount the root tmpfs");
  for (size_t i = 0; i < p.n_entries; ++i) {
    const RootEntry& r = p.entries[i];
    const char* t = r.target.c_str();
    switch (r.kind) {
      case RootEntry::kSymlink:
        if (symlink(r.source.c_str(), t) != 0) Fail(e, "symlink in the sandbox root");
        break;
      case RootEntry::kDir:
      case RootEntry::kProc:
        if (mkdir(t, 0755) != 0) Fail(e, "mkdir in the sandbox root");
        // A procfs of the new pid namespace: only the sandbox's processes. Where the kernel refuses it (a
        // container whose /proc is partly masked) /proc stays empty: no host process is visible either way.
        if (r.kind == RootEntry::kProc) (void)mount("proc", t, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
        break;
      case RootEntry::kBindDir:
      case RootEntry::kScratch:
        if (mkdir(t, 0755) != 0) Fail(e, "mkdir in the sandbox root");
        if (mount(r.source.c_str(), t, nullptr, MS_BIND | MS_REC, nullptr) != 0) Fail(e, "bind a folder into the sandbox");
        if (r.kind == RootEntry::kBindDir && !RemountReadOnly(t)) Fail(e, "make a bound folder read-only");
        if (r.kind == RootEntry::kScratch &&
            mount(nullptr, t, nullptr, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV, nullptr) != 0) {
          Fail(e, "remount the scratch directory nosuid");
        }
        break;
      case RootEntry::kBindFile: {
        int fd = open(t, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) Fail(e, "create a mount point in the sandbox root");
        close(fd);
        if (mount(r.source.c_str(), t, nullptr, MS_BIND, nullptr) != 0) Fail(e, "bind a file into the sandbox");
        if (!RemountReadOnly(t)) Fail(e, "make a bound file read-only");
        break;
      }
    }
  }
  if (chdir(p.root) != 0) Fail(e, "chdir to the sandbox root");
  // pivot_root(".", "."): the old root ends up on top of the new one, then is detached.
  if (syscall(SYS_pivot_root, ".", ".") != 0) Fail(e, "pivot_root");
  if (umount2(".", MNT_DETACH) != 0) Fail(e, "detach the host's root");
  if (chdir("/") != 0) Fail(e, "chdir /");
  if (!RemountReadOnly("/")) Fail(e, "make the sandbox root read-only");
}

// Maps uid and gid 65534 of a new, nested user namespace to this process's ids (root of the first one): the
// command runs as an unprivileged user that owns the scratch directory and nothing else, and its capabilities
// are gone at exec. `proc` is a descriptor of a procfs where this process is visible.
void BecomeNobody(const ChildPlan& p, int proc) {
  const int e = p.err_fd;
  // The set*id calls so far made this process non-dumpable, which gives its /proc files to the host's root:
  // dumpable again, it may write its own id maps.
  if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) Fail(e, "set dumpable");
  if (p.unshare_fn(CLONE_NEWUSER) != 0) Fail(e, "unshare(nested user namespace)");
  for (const auto& [path, text] : {std::make_pair("self/setgroups", "deny"), std::make_pair("self/uid_map", "65534 0 1\n"),
                                    std::make_pair("self/gid_map", "65534 0 1\n")}) {
    if (!WriteProc(path, text, proc)) Fail(e, path);
  }
  if (setresgid(kNobody, kNobody, kNobody) != 0 || setresuid(kNobody, kNobody, kNobody) != 0) {
    Fail(e, "become the unprivileged sandbox user");
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) Fail(e, "set non-dumpable");
}

// The namespace owner: new user (root inside = nobody outside), net, mount, pid, ipc and uts namespaces;
// then pid 1 of the new pid namespace builds the sandbox's own root, drops to an unprivileged user, takes
// the limits and the system-call filter, and runs the command.
[[noreturn]] void Child(const ChildPlan& p) {
  const int e = p.err_fd;
  if (p.unshare_fn(CLONE_NEWUSER) != 0) Fail(e, "unshare(user namespace)");
  // Only a process of the parent namespace may map root inside to "nobody" outside: ask the parent (it also
  // puts this process into the sandbox's cgroups, where it can).
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
  const int proc = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);  // the host's procfs, for the id maps
  if (proc < 0) Fail(e, "open /proc");
  BuildRoot(p);
  BecomeNobody(p, proc);
  close(proc);
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
  if (chdir(kScratchInside) != 0) Fail(e, "chdir scratch");
  int out = open(p.output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) Fail(e, "open the output file");
  dup2(out, 1);
  dup2(out, 2);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, 0);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) Fail(e, "no_new_privs");
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, p.seccomp) != 0) Fail(e, "install the system-call filter");
  execle("/bin/sh", "sh", "-c", p.command, static_cast<char*>(nullptr), const_cast<char* const*>(p.env));
  Fail(e, "exec /bin/sh");
}

}  // namespace

namespace {

// What the sandbox's root holds: the programs and libraries (read-only), the loader's cache, four device
// nodes, a fresh /proc, the scratch directory at /sandbox (and /tmp pointing there). Nothing else of the host.
std::vector<RootEntry> RootEntries(const std::string& root, const std::string& scratch) {
  std::vector<RootEntry> v;
  struct stat st {};
  auto add_path = [&](const std::string& path) {
    if (lstat(path.c_str(), &st) != 0) return;
    if (S_ISLNK(st.st_mode)) {
      std::error_code ec;
      const auto target = fs::read_symlink(path, ec);
      if (!ec) v.push_back({RootEntry::kSymlink, target.string(), root + path});
    } else if (S_ISDIR(st.st_mode)) {
      v.push_back({RootEntry::kBindDir, path, root + path});
    } else {
      v.push_back({RootEntry::kBindFile, path, root + path});
    }
  };
  for (const char* dir : {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}) add_path(dir);
  v.push_back({RootEntry::kDir, "", root + "/etc"});
  for (const char* path : {"/etc/ld.so.cache", "/etc/alternatives"}) add_path(path);
  v.push_back({RootEntry::kDir, "", root + "/dev"});
  for (const char* dev : {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"}) add_path(dev);
  v.push_back({RootEntry::kProc, "", root + "/proc"});
  v.push_back({RootEntry::kScratch, scratch, root + kScratchInside});
  v.push_back({RootEntry::kSymlink, kScratchInside, root + "/tmp"});
  return v;
}

// The sandbox's memory and process caps as cgroups, where this process may make them: a child of its own
// cgroup in each cgroup v1 hierarchy of the memory and pids controllers, or in the v2 hierarchy when it
// delegates them. Best effort: where none can be made the rlimits alone hold the command.
class Cgroups {
 public:
  Cgroups(const SandboxLimits& limits, const std::string& name) {
    const std::string mountinfo = ReadFile("/proc/self/mountinfo").value_or("");
    const std::string self = ReadFile("/proc/self/cgroup").value_or("");
    for (absl::string_view line : absl::StrSplit(mountinfo, '\n')) {
      // id parent major:minor root mount-point options [optional...] - fstype source super-options
      std::vector<std::string> f = absl::StrSplit(line, ' ');
      const auto dash = std::find(f.begin(), f.end(), "-");
      if (f.size() < 5 || f.end() - dash < 4) continue;  // the dash, then fstype, source and super-options
      const std::string fstype = *(dash + 1), super = *(dash + 3);
      std::vector<std::pair<std::string, std::string>> files;  // controller file -> value
      std::string hierarchy;                                   // its line in /proc/self/cgroup: "N:<this>:path"
      if (fstype == "cgroup") {
        std::vector<std::string> opts = absl::StrSplit(super, ',');
        for (const std::string c : {"memory", "pids"}) {
          if (std::find(opts.begin(), opts.end(), c) == opts.end()) continue;
          hierarchy = c;
          if (c == "memory") files.push_back({"memory.limit_in_bytes", std::to_string(limits.memory_mb << 20)});
          if (c == "pids") files.push_back({"pids.max", std::to_string(limits.max_processes + 2)});
        }
        if (files.size() != 1) continue;  // a hierarchy of both, or of neither: leave it alone
      } else if (fstype == "cgroup2") {
        files = {{"memory.max", std::to_string(limits.memory_mb << 20)},
                 {"pids.max", std::to_string(limits.max_processes + 2)}};
      } else {
        continue;
      }
      std::string path;  // of this process in that hierarchy, relative to the hierarchy's root
      for (absl::string_view l : absl::StrSplit(self, '\n')) {
        std::vector<std::string> g = absl::StrSplit(l, absl::MaxSplits(':', 2));
        if (g.size() != 3) continue;
        std::vector<std::string> names = absl::StrSplit(g[1], ',');
        const bool match = fstype == "cgroup2" ? g[0] == "0" && g[1].empty()
                                               : std::find(names.begin(), names.end(), hierarchy) != names.end();
        if (match) path = g[2];
      }
      const std::string& root = f[3];
      if (root != "/" && path.rfind(root, 0) == 0) path = path.substr(root.size());
      const std::string dir = f[4] + (path == "/" ? "" : path) + "/" + name;
      if (mkdir(dir.c_str(), 0700) != 0) continue;
      bool capped = false;
      for (const auto& [file, value] : files) {
        if (WriteProc((dir + "/" + file).c_str(), value.c_str())) {
          capped = true;
          controllers_.push_back(file.substr(0, file.find('.')));
        }
      }
      if (capped) {
        dirs_.push_back(dir);
      } else {
        rmdir(dir.c_str());
      }
    }
  }
  ~Cgroups() {
    // The processes are gone or going (the pid namespace dies with its init): wait for the kernel briefly.
    for (const auto& dir : dirs_) {
      for (int i = 0; i < 200 && rmdir(dir.c_str()) != 0 && errno == EBUSY; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }
  // Moves `pid` (and so everything it starts) into every cgroup; false if one refused it.
  bool Add(pid_t pid) const {
    bool ok = true;
    for (const auto& dir : dirs_) ok = WriteProc((dir + "/cgroup.procs").c_str(), std::to_string(pid).c_str()) && ok;
    return ok;
  }
  std::string controllers() const { return absl::StrJoin(controllers_, ","); }

 private:
  std::vector<std::string> dirs_;
  std::vector<std::string> controllers_;
};

}  // namespace

absl::StatusOr<SandboxResult> RunSandboxed(const std::string& command, const std::map<std::string, std::string>& files,
                                           const SandboxLimits& limits) {
  // base/work: the scratch directory (the command's, read-write, at /sandbox inside); base/root: the empty
  // mount point of the sandbox's own root. The base folder is searchable so that the namespace's root (the
  // outside "nobody") reaches both.
  char tmpl[] = "/tmp/rlhf-sandbox-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return FileError(errno, "create the scratch directory", tmpl);
  const std::string base = tmpl, scratch = base + "/work", root = base + "/root";
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{base};
  chmod(base.c_str(), 0711);
  for (const auto& dir : {scratch, root}) {
    if (mkdir(dir.c_str(), 0755) != 0) return FileError(errno, "create", dir);
  }
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
  const std::string output = absl::StrCat(kScratchInside, "/.output"), home = absl::StrCat("HOME=", kScratchInside),
                    tmpdir = absl::StrCat("TMPDIR=", kScratchInside);
  const std::vector<RootEntry> entries = RootEntries(root, scratch);
  // The id-map handshake: sock[0] stays with the parent, sock[1] goes to the child.
  int sock[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock) != 0) {
    close(pipefd[0]);
    close(pipefd[1]);
    return absl::UnavailableError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  const char* env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", home.c_str(), tmpdir.c_str(), "LANG=C.UTF-8", nullptr};
  ChildPlan plan;
  plan.err_fd = pipefd[1];
  plan.scratch = scratch.c_str();
  plan.output = output.c_str();
  plan.command = command.c_str();
  plan.env = env;
  plan.sync_fd = sock[1];
  if (UnshareFn fn = g_unshare.load()) plan.unshare_fn = fn;
  plan.limits = limits;
  plan.root = root.c_str();
  plan.entries = entries.data();
  plan.n_entries = entries.size();
  plan.seccomp = SeccompFilter();
  const Cgroups cgroups(limits, base.substr(base.rfind('/') + 1));
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
      const std::string proc = "/proc/" + std::to_string(pid);
      const std::string map = absl::StrCat("0 ", kNobody, " 1\n");
      mapped = WriteProc((proc + "/setgroups").c_str(), "deny") && WriteProc((proc + "/uid_map").c_str(), map.c_str()) &&
               WriteProc((proc + "/gid_map").c_str(), map.c_str()) && cgroups.Add(pid);
    }
    (void)!send(sock[0], mapped ? "g" : "x", 1, MSG_NOSIGNAL);
    close(sock[0]);
  }
  SandboxResult r;
  r.cgroups = cgroups.controllers();
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

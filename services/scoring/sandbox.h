// Runs an untrusted command (e.g. a test of generated code) so that it fails closed:
//   - new user, network, mount, pid, ipc and uts namespaces: no network but a downed loopback, and the
//     command's processes die with it;
//   - its own root (a read-only tmpfs): /usr and the libraries read-only, /etc/ld.so.cache, /dev/null, zero,
//     random and urandom, a fresh /proc of its pid namespace (no host process visible; left empty where the
//     kernel refuses to mount one), the scratch directory at /sandbox (also /tmp, HOME and TMPDIR). No other
//     host file is reachable;
//   - it runs as uid / gid 65534 of a nested user namespace (unprivileged inside; "nobody" outside), with
//     no capabilities and no_new_privs;
//   - a seccomp filter: tracing, mounts, namespaces, kernel keys, BPF, perf, io_uring, modules, clocks and
//     non-Unix sockets fail with EPERM;
//   - rlimits on CPU seconds, address space, file size, open files and processes, and where this process may
//     make cgroups (v1 memory / pids hierarchies, or v2 with those controllers delegated) a memory and a
//     process cap of its own;
//   - a wall-clock timeout after which the whole process tree is killed;
//   - the scratch directory is removed afterwards.
// If the isolation cannot be set up (user namespaces refused, as on many Kubernetes nodes; no uid to map),
// RunSandboxed refuses with FAILED_PRECONDITION and runs nothing: never an unconfined run. The refusal never
// harms the caller's process (no SIGPIPE from the child's early exit, no leaked descriptors or folders).
// Thread-safety: concurrent calls are fine (each uses its own scratch directory and child processes).
#pragma once

#include <map>
#include <string>

#include "common/status.h"

namespace rlhf::scoring {

struct SandboxLimits {
  double wall_seconds = 10;     // killed after this long
  int64_t cpu_seconds = 10;     // RLIMIT_CPU
  int64_t memory_mb = 1024;     // RLIMIT_AS
  int64_t file_mb = 16;         // RLIMIT_FSIZE: largest file it may write
  int64_t max_processes = 16;   // RLIMIT_NPROC of the sandbox user
  int64_t max_output_bytes = 1 << 16;  // stdout + stderr kept (the tail)
};

struct SandboxResult {
  int exit_code = -1;      // the command's exit status; -1 when killed by a signal
  int signal = 0;          // the signal that ended it, if any
  bool timed_out = false;  // killed at the wall-clock limit
  std::string output;      // the tail of stdout + stderr
  std::string cgroups;     // the cgroup controllers that capped it ("memory,pids"); "" where none could be made
};

// Writes `files` (name -> content) into a new scratch directory and runs `/bin/sh -c command` there.
// FAILED_PRECONDITION when isolation is unavailable; the file errors of common/file.h for the scratch
// directory; UNAVAILABLE when a pipe or process cannot be made now (retry later).
absl::StatusOr<SandboxResult> RunSandboxed(const std::string& command, const std::map<std::string, std::string>& files,
                                           const SandboxLimits& limits);

// Fault-injection seam: the unshare(2) the sandbox's child calls to create its namespaces. Tests install a
// function that fails (e.g. with EPERM, as on hosts that refuse user namespaces) to exercise the refusal
// path on every machine. It runs in the forked child: it must be async-signal-safe. Returns the previous
// function; pass nullptr to restore the system call. Not to be changed while sandboxes run.
using UnshareFn = int (*)(int flags);
UnshareFn SetSandboxUnshareForTesting(UnshareFn fn);

}  // namespace rlhf::scoring

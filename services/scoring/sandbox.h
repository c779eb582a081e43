// Runs an untrusted command (e.g. a test of generated code) so that it fails closed:
//   - new user, network, mount and pid namespaces: no network but a downed loopback, every mount read-only
//     except a fresh scratch directory, the command's processes die with it;
//   - it runs as the unprivileged "nobody" (uid / gid 65534 outside the namespace);
//   - rlimits on CPU seconds, address space, file size, open files and processes;
//   - a wall-clock timeout after which the whole process tree is killed;
//   - the scratch directory is removed afterwards.
// If the isolation cannot be set up (namespaces not permitted, no uid to map), RunSandboxed refuses with
// FAILED_PRECONDITION and runs nothing: never an unconfined run. The refusal never harms the caller's
// process (no SIGPIPE from the child's early exit, no leaked descriptors or scratch directories).
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

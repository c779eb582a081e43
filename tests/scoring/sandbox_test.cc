// The code sandbox fails closed: it cannot write outside its scratch directory, reach the network, fork
// without bound or outlive its timeout. Where this machine cannot create the namespaces, each test says so
// and is skipped (visible in the output), never passed silently.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "common/metrics.h"
#include "services/scoring/sandbox.h"
#include "services/scoring/scorer.h"
#include "tests/test_util.h"

namespace rlhf::scoring {
namespace {

namespace fs = std::filesystem;

#define RUN_OR_SKIP(var, ...)                                                                          \
  auto var##_or = RunSandboxed(__VA_ARGS__);                                                            \
  if (var##_or.status().code() == absl::StatusCode::kFailedPrecondition) {                              \
    GTEST_SKIP() << "isolation is not available on this machine: " << var##_or.status().message();      \
  }                                                                                                     \
  ASSERT_TRUE(var##_or.ok()) << var##_or.status();                                                      \
  const SandboxResult& var = *var##_or

TEST(Sandbox, RunsTheCommandInItsScratchDirectory) {
  SandboxLimits lim;
  RUN_OR_SKIP(r, "cat input.txt; echo made > out.txt && cat out.txt; id -u; exit 3", {{"input.txt", "hello\n"}}, lim);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_FALSE(r.timed_out);
  EXPECT_NE(r.output.find("hello\nmade\n65534\n"), std::string::npos) << r.output;  // an unprivileged user inside
}

TEST(Sandbox, CannotWriteOutsideItsScratchDirectory) {
  const std::string outside = "/tmp/rlhf-sandbox-escape-" + std::to_string(getpid());
  const std::string home_file = std::string(RLHF_BINARY_DIR) + "/sandbox-escape";
  SandboxLimits lim;
  RUN_OR_SKIP(r, "touch " + outside + "; echo x > " + home_file + "; echo x > /dev/shm/escape; mkdir /escape; echo done",
              {}, lim);
  EXPECT_NE(r.output.find("done"), std::string::npos);
  EXPECT_NE(r.output.find("Read-only file system"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(outside));
  EXPECT_FALSE(fs::exists(home_file));
  EXPECT_FALSE(fs::exists("/escape"));
}

TEST(Sandbox, CannotReachTheNetwork) {
  // A server listening on loopback outside: the sandbox has its own network namespace.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  SandboxLimits lim;
  const std::string py = "/usr/bin/python3 -c \"import socket\ntry:\n socket.create_connection(('127.0.0.1', " +
                         std::to_string(port) + "), timeout=2); print('CONNECTED')\nexcept OSError as e: print('refused', e)\"";
  RUN_OR_SKIP(r, py, {}, lim);
  close(fd);
  EXPECT_EQ(r.output.find("CONNECTED"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("refused"), std::string::npos) << r.output;
}

TEST(Sandbox, CannotForkWithoutBound) {
  SandboxLimits lim;
  lim.max_processes = 8;
  lim.wall_seconds = 5;
  RUN_OR_SKIP(r, "for i in $(seq 1 64); do sleep 2 & done; echo all-started", {}, lim);
  EXPECT_EQ(r.output.find("all-started"), std::string::npos) << r.output;
}

bool SleepAlive(const std::string& arg) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::ifstream in(e.path() / "cmdline");
    std::string cmd;
    std::getline(in, cmd);
    if (cmd.find("sleep") != std::string::npos && cmd.find(arg) != std::string::npos) return true;
  }
  return false;
}

TEST(Sandbox, CannotOutliveItsTimeout) {
  SandboxLimits lim;
  lim.wall_seconds = 1;
  const auto start = std::chrono::steady_clock::now();
  // A detached grandchild too: it dies with the sandbox's pid namespace.
  RUN_OR_SKIP(r, "(setsid sleep 37.25 &) ; sleep 36.75", {}, lim);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(r.timed_out);
  EXPECT_LT(took, 5.0);
  usleep(300000);
  EXPECT_FALSE(SleepAlive("36.75"));
  EXPECT_FALSE(SleepAlive("37.25"));
}

TEST(Sandbox, MemoryAndCpuAreLimited) {
  SandboxLimits lim;
  lim.memory_mb = 256;
  lim.cpu_seconds = 1;
  lim.wall_seconds = 10;
  RUN_OR_SKIP(r, "/usr/bin/python3 -c \"b = bytearray(1 << 30)\"; echo rc=$?; /usr/bin/python3 -c \"while True: pass\"", {}, lim);
  EXPECT_EQ(r.output.find("rc=0"), std::string::npos) << r.output;  // the allocation failed
  EXPECT_FALSE(r.timed_out);  // the CPU limit ended the loop before the wall clock
  EXPECT_NE(r.exit_code, 0);
}

// The escapes tried by hand before the sandbox had its own root, user and filter: each must fail.
TEST(Sandbox, SeesNoHostProcessAndNoHostFile) {
  const std::string secret = "/tmp/rlhf-sandbox-secret-" + std::to_string(getpid());
  std::ofstream(secret) << "SECRET-CONTENT\n";
  SandboxLimits lim;
  RUN_OR_SKIP(r,
              "echo procs=$(ls /proc | grep -c '^[0-9]'); test -e /proc/" + std::to_string(getpid()) +
                  " && echo HOST-PID-VISIBLE; cat " + secret + " /etc/passwd /etc/hostname " RLHF_SOURCE_DIR
                  "/README.md 2>&1; echo root: $(ls /); echo pwd=$(pwd) tmp=$(readlink /tmp)",
              {}, lim);
  std::filesystem::remove(secret);
  EXPECT_EQ(r.output.find("HOST-PID-VISIBLE"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("SECRET-CONTENT"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("root:x:0"), std::string::npos) << r.output;
  // Its own processes only (the shell, ls, grep): a handful, where the host has many.
  const auto at = r.output.find("procs=");
  ASSERT_NE(at, std::string::npos) << r.output;
  EXPECT_LE(std::stoi(r.output.substr(at + 6)), 5) << r.output;
  EXPECT_NE(r.output.find("root: bin dev etc lib"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pwd=/sandbox tmp=/sandbox"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(" home "), std::string::npos) << r.output;
}

TEST(Sandbox, RunsAsAnUnprivilegedUserWithoutCapabilities) {
  SandboxLimits lim;
  RUN_OR_SKIP(r,
              "id -u; id -g; grep -E '^Cap(Eff|Prm)' /proc/self/status 2>/dev/null || echo no-proc; "
              "unshare -r true 2>&1 || echo unshare-refused",
              {}, lim);
  EXPECT_NE(r.output.find("65534\n65534\n"), std::string::npos) << r.output;
  // Where the kernel refused a procfs for the sandbox (some containers), the capabilities cannot be read inside.
  if (r.output.find("no-proc") == std::string::npos) {
    EXPECT_NE(r.output.find("CapPrm:\t0000000000000000\nCapEff:\t0000000000000000"), std::string::npos) << r.output;
  }
  EXPECT_NE(r.output.find("unshare-refused"), std::string::npos) << r.output;
}

TEST(Sandbox, SystemCallsASolutionHasNoUseForAreRefused) {
  // Each call through libc's syscall(): ptrace(PTRACE_TRACEME), unshare(CLONE_NEWUSER), mount, keyctl, bpf;
  // socket(AF_INET) refused, socket(AF_UNIX) allowed; a thread and a child process still work.
  const std::string py = R"PY(
import ctypes, os, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *args):
    r = libc.syscall(nr, *args)
    print(name, r, os.strerror(ctypes.get_errno()) if r < 0 else "ok")
call("ptrace", 101, 0, 0, 0, 0)
call("unshare", 272, 0x10000000)
call("mount", 165, b"none", b"/sandbox", b"tmpfs", 0, 0)
call("keyctl", 250, 0, 0, 0, 0)
call("bpf", 321, 0, 0, 0)
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM); print("inet ok")
except OSError as e:
    print("inet", e.strerror)
socket.socketpair(); print("unix ok")
t = threading.Thread(target=lambda: print("thread ok")); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
)PY";
  SandboxLimits lim;
  lim.wall_seconds = 20;
  RUN_OR_SKIP(r, "/usr/bin/python3 check.py", {{"check.py", py}}, lim);
  for (const char* call : {"ptrace", "unshare", "mount", "keyctl", "bpf"}) {
    EXPECT_NE(r.output.find(std::string(call) + " -1 Operation not permitted"), std::string::npos) << call << "\n" << r.output;
  }
  EXPECT_NE(r.output.find("inet Operation not permitted"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("unix ok\nthread ok\nchild 7"), std::string::npos) << r.output;
}

TEST(Sandbox, CgroupsCapMemoryAndProcessesWhereThisMachineAllowsThem) {
  SandboxLimits lim;
  RUN_OR_SKIP(r, "grep -E 'memory|pids' /proc/self/cgroup", {}, lim);
  if (r.cgroups.empty()) GTEST_SKIP() << "no cgroup can be made here: the rlimits alone hold the command";
  EXPECT_NE(r.cgroups.find("memory"), std::string::npos) << r.cgroups;
  EXPECT_NE(r.cgroups.find("pids"), std::string::npos) << r.cgroups;
  EXPECT_NE(r.output.find("rlhf-sandbox-"), std::string::npos) << "the command runs inside them:\n" << r.output;
  // Removed afterwards.
  auto left = testing::RunCommand("find /sys/fs/cgroup -maxdepth 6 -name 'rlhf-sandbox-*' 2>/dev/null");
  EXPECT_EQ(left.out, "") << left.out;
}

// The refusal path, on every machine: a seam makes the namespace setup fail as it does where the kernel
// refuses user namespaces (hardened hosts, many Kubernetes nodes). The child exits before the id-map
// handshake; the caller must get FAILED_PRECONDITION with the reason, run nothing, leak no descriptor, and live
// (a write to the dead child's pipe once killed the whole process with SIGPIPE).
int RefuseUserNamespace(int flags) {
  if (flags & CLONE_NEWUSER) {
    errno = EPERM;
    return -1;
  }
  return unshare(flags);
}
int RefuseInnerNamespaces(int flags) {
  if (flags & CLONE_NEWPID) {
    errno = EPERM;
    return -1;
  }
  return unshare(flags);
}

struct SeamGuard {
  explicit SeamGuard(UnshareFn fn) : previous(SetSandboxUnshareForTesting(fn)) {}
  ~SeamGuard() { SetSandboxUnshareForTesting(previous); }
  UnshareFn previous;
};

int OpenDescriptors() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

void ExpectCleanRefusal(UnshareFn seam, const std::string& reason) {
  SeamGuard guard(seam);
  const std::string marker = "/tmp/rlhf-sandbox-ran-" + std::to_string(getpid());
  const int fds = OpenDescriptors();
  for (int i = 0; i < 20; ++i) {
    auto r = RunSandboxed("touch " + marker, {{"solution.py", "print(1)"}}, SandboxLimits{});
    ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_NE(r.status().message().find(reason), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("refusing to run it unconfined"), std::string::npos) << r.status();
  }
  EXPECT_FALSE(fs::exists(marker)) << "the command ran unconfined";
  EXPECT_EQ(OpenDescriptors(), fds) << "descriptors leaked";
}

TEST(Sandbox, RefusesCleanlyWhereUserNamespacesAreRefused) {
  ExpectCleanRefusal(&RefuseUserNamespace, "unshare(user namespace): Operation not permitted");
}

TEST(Sandbox, RefusesCleanlyWhereTheInnerNamespacesAreRefused) {
  // The user namespace may succeed here (then the parent writes the id maps and the child fails next), or
  // the machine refuses it already: a refusal either way.
  ExpectCleanRefusal(&RefuseInnerNamespaces, "unshare(");
}

TEST(Sandbox, RefusesUnsafeFileNames) {
  EXPECT_EQ(RunSandboxed("true", {{"../x", ""}}, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rlhf::scoring

namespace rlhf::scoring {
namespace {

TEST(CodeReward, PassingAndFailingSolutionsInTheSandbox) {
  RewardConfig c;
  c.code_weight = 1;
  c.code_command = "/usr/bin/python3 solution.py < tests";
  c.code_wall_seconds = 3;
  c.code_cpu_seconds = 1;
  auto scorer = Scorer::Create(c);
  ASSERT_TRUE(scorer.ok()) << scorer.status();
  if (!(*scorer)->code_refusal().ok()) {
    GTEST_SKIP() << "isolation is not available on this machine: " << (*scorer)->code_refusal().message();
  }
  auto sample = [](const std::string& completion) {
    Sample s;
    s.set_completion(completion);
    (*s.mutable_extra())["tests"] = "\"3 4\\n\"";
    return s;
  };
  std::vector<Sample> v = {
      sample("Here:\n```python\na, b = map(int, input().split())\nassert a + b == 7\n```\nDone."),
      sample("```python\na, b = map(int, input().split())\nassert a * b == 7\n```"),
      sample("```python\nopen('/usr/x-escape', 'w')\n```"),
      sample("```python\nwhile True: pass\n```")};
  auto out = (*scorer)->Score(v, false);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(v[0].reward_parts().at("code"), 1.f);
  EXPECT_EQ(v[1].reward_parts().at("code"), 0.f);
  EXPECT_EQ(v[2].reward_parts().at("code"), 0.f);  // read-only outside the scratch directory
  EXPECT_EQ(v[3].reward_parts().at("code"), 0.f);  // killed by the CPU or wall-clock limit
  EXPECT_EQ(ExtractCode("no fence"), "no fence");
}

// Where isolation is missing the scorer does not die and does not refuse to start: it says why once, gives
// every sample FAILED_PRECONDITION for the code source (no reward, nothing run) and keeps scoring.
TEST(CodeReward, RefusedWhereIsolationIsMissingWhileTheScorerServesOn) {
  SeamGuard guard(&RefuseUserNamespace);
  RewardConfig c;
  c.code_weight = 1;
  c.code_command = "touch /tmp/rlhf-code-reward-ran-" + std::to_string(getpid());
  auto scorer = Scorer::Create(c);
  ASSERT_TRUE(scorer.ok()) << scorer.status();
  EXPECT_EQ((*scorer)->code_refusal().code(), absl::StatusCode::kFailedPrecondition);
  auto& failures = Metrics::Process().Counter("rlhf_reward_failures_total", "samples a reward source could not score",
                                              {{"source", "code"}});
  const double before = failures.Value();
  for (int call = 0; call < 3; ++call) {
    std::vector<Sample> v(2);
    v[0].set_completion("```python\nprint(1)\n```");
    v[1].set_completion("print(2)");
    auto out = (*scorer)->Score(v, false);
    ASSERT_TRUE(out.ok()) << out.status();
    for (const auto& o : *out) {
      EXPECT_EQ(o.status.code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_NE(o.status.message().find("code: the code sandbox cannot isolate"), std::string::npos) << o.status;
    }
    for (const auto& s : v) EXPECT_EQ(s.reward_parts().count("code"), 0u) << "a made-up reward";
  }
  EXPECT_EQ(failures.Value() - before, 6);
  EXPECT_FALSE(fs::exists("/tmp/rlhf-code-reward-ran-" + std::to_string(getpid())));
}

}  // namespace
}  // namespace rlhf::scoring

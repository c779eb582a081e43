// The code sandbox fails closed: it cannot write outside its scratch directory, reach the network, fork
// without bound or outlive its timeout. Where this machine cannot create the namespaces, each test says so
// and is skipped (visible in the output), never passed silently.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "services/scoring/sandbox.h"
#include "services/scoring/scorer.h"

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
  EXPECT_NE(r.output.find("hello\nmade\n0\n"), std::string::npos) << r.output;  // root inside = nobody outside
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
  if (scorer.status().code() == absl::StatusCode::kFailedPrecondition) {
    GTEST_SKIP() << "isolation is not available on this machine: " << scorer.status().message();
  }
  ASSERT_TRUE(scorer.ok()) << scorer.status();
  auto sample = [](const std::string& completion) {
    Sample s;
    s.set_completion(completion);
    (*s.mutable_extra())["tests"] = "\"3 4\\n\"";
    return s;
  };
  std::vector<Sample> v = {
      sample("Here:\n```python\na, b = map(int, input().split())\nassert a + b == 7\n```\nDone."),
      sample("```python\na, b = map(int, input().split())\nassert a * b == 7\n```"),
      sample("```python\nopen('/tmp/x-escape', 'w')\n```"),
      sample("```python\nwhile True: pass\n```")};
  auto out = (*scorer)->Score(v, false);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(v[0].reward_parts().at("code"), 1.f);
  EXPECT_EQ(v[1].reward_parts().at("code"), 0.f);
  EXPECT_EQ(v[2].reward_parts().at("code"), 0.f);  // read-only outside the scratch directory
  EXPECT_EQ(v[3].reward_parts().at("code"), 0.f);  // killed by the CPU or wall-clock limit
  EXPECT_EQ(ExtractCode("no fence"), "no fence");
}

}  // namespace
}  // namespace rlhf::scoring

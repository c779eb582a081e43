#include "common/metrics.h"

#include "tests/test_util.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace rlhf {
namespace {

// A plain HTTP/1.0 GET on loopback; returns the whole response.
std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST(Metrics, NamingRulesAreEnforced) {
  auto& m = Metrics::Process();
  EXPECT_THROW(m.Counter("tokens_total", "no prefix"), std::invalid_argument);
  EXPECT_THROW(m.Counter("rlhf_tokens", "counter without _total"), std::invalid_argument);
  EXPECT_THROW(m.Gauge("rlhf_things_total", "gauge with _total"), std::invalid_argument);
  EXPECT_THROW(m.Gauge("rlhf_Bad_Case", "upper case"), std::invalid_argument);
  EXPECT_THROW(m.Counter("rlhf_x_total", "id label", {{"prompt_id", "17"}}), std::invalid_argument);
  EXPECT_NO_THROW(m.Counter("rlhf_test_events_total", "fine", {{"role", "test"}}));
  EXPECT_THROW(m.Gauge("rlhf_test_events_total", "same name, other kind"), std::invalid_argument);
}

TEST(Metrics, EachProcessOfANodeHasItsOwnPortOffset) {
  // The launcher's local rank offsets the base port, so that the ranks of one node do not collide.
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  unsetenv("LOCAL_RANK");
  unsetenv("MPI_LOCALRANKID");
  EXPECT_EQ(LocalRank(), 0);
  setenv("LOCAL_RANK", "3", 1);
  EXPECT_EQ(LocalRank(), 3);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  EXPECT_EQ(LocalRank(), 1) << "mpirun's variable first";
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  unsetenv("LOCAL_RANK");
}

TEST(Metrics, ServedOverHttpInPrometheusFormat) {
  auto& m = Metrics::Process();
  m.Counter("rlhf_test_requests_total", "requests seen by the test", {{"role", "test"}}).Increment(3);
  m.Gauge("rlhf_test_policy_version", "a gauge").Set(7);
  m.Histogram("rlhf_test_step_duration_seconds", "a histogram", {0.1, 1.0}).Observe(0.5);
  auto port = m.Serve("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_GT(*port, 0);
  std::string body = HttpGet(*port, "/metrics");
  EXPECT_NE(body.find("200 OK"), std::string::npos) << body;
  EXPECT_NE(body.find("# TYPE rlhf_test_requests_total counter"), std::string::npos) << body;
  EXPECT_NE(body.find("rlhf_test_requests_total{role=\"test\"} 3"), std::string::npos) << body;
  EXPECT_NE(body.find("rlhf_test_policy_version 7"), std::string::npos) << body;
  EXPECT_NE(body.find("rlhf_test_step_duration_seconds_bucket{le=\"1\"} 1"), std::string::npos) << body;
  // Probes that cannot speak gRPC with TLS and a token ask /healthz; nothing secret in it.
  const std::string health = HttpGet(*port, "/healthz");
  EXPECT_NE(health.find("200 OK"), std::string::npos) << health;
  EXPECT_NE(health.find("\r\n\r\nok\n"), std::string::npos) << health;
  EXPECT_NE(HttpGet(*port, "/other").find("404"), std::string::npos);
  EXPECT_EQ(m.Serve("127.0.0.1:0").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(m.Text().find("rlhf_test_policy_version"), std::string::npos);
}

}  // namespace
}  // namespace rlhf

namespace rlhf {
namespace {

// The exposition passes Prometheus's own checker (promtool, from Debian's prometheus package).
TEST(Metrics, PromtoolAcceptsTheExposition) {
  if (std::system("command -v promtool > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not installed (scripts/setup.sh installs the prometheus package)";
  }
  auto& m = Metrics::Process();
  m.Counter("rlhf_test_promtool_samples_total", "samples seen", {{"role", "test"}}).Increment();
  m.Gauge("rlhf_test_promtool_queue_bytes", "bytes queued").Set(10);
  std::string path = ::testing::TempDir() + "/metrics.prom";
  {
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::string text = m.Text();
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  auto run = rlhf::testing::RunCommand("promtool check metrics < " + path);
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_EQ(run.out.find("rlhf_test_promtool"), std::string::npos) << "promtool complains: " << run.out;
}

TEST(Metrics, ProcessLabelsGoOnEveryMetricThatLacksThem) {
  auto& m = Metrics::Process();
  m.Gauge("rlhf_test_process_labels_plain", "a gauge without labels").Set(3);
  m.Gauge("rlhf_test_process_labels_own", "a gauge with its own role", {{"role", "scorer"}}).Set(4);
  m.SetProcessLabels({{"role", "rollout"}, {"rank", "3"}});
  m.SetProcessLabels({{"rank", "2"}});  // adds to the earlier set, replacing the value it names
  const std::string text = m.Text();
  EXPECT_NE(text.find("rlhf_test_process_labels_plain{rank=\"2\",role=\"rollout\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("rlhf_test_process_labels_own{rank=\"2\",role=\"scorer\"} 4"), std::string::npos) << text;
  EXPECT_THROW(m.SetProcessLabels({{"prompt_id", "7"}}), std::invalid_argument);
  m.SetProcessLabels({{"rank", "0"}});
}

}  // namespace
}  // namespace rlhf

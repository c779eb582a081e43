#include "common/metrics.h"
#include <cstdlib>

#include <poll.h>
#include <prometheus/text_serializer.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <thread>

#include "absl/strings/numbers.h"
#include <regex>
#include <sstream>
#include <stdexcept>

namespace rlhf {

const config::Section<MetricsConfig>& MetricsConfig::Spec() {
  static const auto* s = [] {
    auto* s = new config::Section<MetricsConfig>("metrics");
    s->Add("port", &MetricsConfig::port,
           "base port of the Prometheus /metrics endpoint: each process of a node serves on port + its local rank "
           "(OMPI_COMM_WORLD_LOCAL_RANK or LOCAL_RANK; 0 for a process started alone); 0 = not exposed",
           config::InRange(0, 65535));
    s->Add("bind", &MetricsConfig::bind, "address the metrics endpoint listens on");
    return s;
  }();
  return *s;
}

void CheckMetricName(const std::string& name, const std::string& kind, const Labels& labels) {
  static const std::regex kName("rlhf_[a-z0-9_]+");
  if (!std::regex_match(name, kName)) {
    throw std::invalid_argument("metric name '" + name + "' must match rlhf_[a-z0-9_]+");
  }
  bool total = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
  if (kind == "counter" && !total) throw std::invalid_argument("counter '" + name + "' must end in _total");
  if (kind != "counter" && total) throw std::invalid_argument(kind + " '" + name + "' must not end in _total");
  for (const auto& [k, v] : labels) {
    if (std::find(kAllowedLabels.begin(), kAllowedLabels.end(), k) == kAllowedLabels.end()) {
      throw std::invalid_argument("metric '" + name + "': label '" + k +
                                  "' is not an allowed (low-cardinality) label name");
    }
  }
}

Metrics& Metrics::Process() {
  static Metrics* m = new Metrics();  // never destroyed: metric references stay valid until exit
  return *m;
}

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {}
Metrics::~Metrics() = default;  // never runs: the process registry lives until exit

void Metrics::Claim(const std::string& name, const std::string& kind, const Labels& labels) {
  CheckMetricName(name, kind, labels);
  auto [it, fresh] = kinds_.emplace(name, kind);
  if (!fresh && it->second != kind) throw std::invalid_argument("metric '" + name + "' is a " + it->second);
}

prometheus::Counter& Metrics::Counter(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Claim(name, "counter", labels);
  return prometheus::BuildCounter().Name(name).Help(help).Register(*registry_).Add(labels);
}

prometheus::Gauge& Metrics::Gauge(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Claim(name, "gauge", labels);
  return prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add(labels);
}

prometheus::Histogram& Metrics::Histogram(const std::string& name, const std::string& help,
                                          const std::vector<double>& buckets, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Claim(name, "histogram", labels);
  return prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_).Add(labels, buckets);
}

// The HTTP endpoint. prometheus-cpp's own Exposer (civetweb) cannot start its worker threads in a process
// that has LibTorch loaded (pthread_create fails with the small fixed stack it asks for), so /metrics is
// served here: one thread, one request per connection, HTTP/1.1 with Connection: close.
class MetricsHttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                                 std::function<std::string()> body) {
    auto colon = address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "' must be host:port"));
    }
    std::string host = address.substr(0, colon);
    int port = 0;
    if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "': bad port"));
    }
    if (host.empty() || host == "*") host = "0.0.0.0";
    if (host == "localhost") host = "127.0.0.1";
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "': host must be an IPv4 address"));
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 16) != 0) {
      std::string err = std::strerror(errno);
      if (fd >= 0) close(fd);
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": ", err,
                                                 " (is the port in use? set metrics.port)"));
    }
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
    s->fd_ = fd;
    s->port_ = ntohs(addr.sin_port);
    s->body_ = std::move(body);
    s->thread_ = std::thread([p = s.get()] { p->Loop(); });
    return s;
  }
  ~MetricsHttpServer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    close(fd_);
  }
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{2, 0};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      Handle(c);
      close(c);
    }
  }
  void Handle(int c) {
    std::string req;
    char buf[2048];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384) {
      ssize_t n = recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
    }
    std::string line = req.substr(0, req.find("\r\n"));
    std::string status = "200 OK", type = "text/plain; version=0.0.4; charset=utf-8", body;
    if (line.rfind("GET ", 0) != 0) {
      status = "405 Method Not Allowed";
      body = "only GET\n";
    } else {
      std::string path = line.substr(4, line.find(' ', 4) - 4);
      if (path == "/metrics" || path.rfind("/metrics?", 0) == 0) {
        body = body_();
      } else if (path == "/healthz") {  // for probes that cannot speak gRPC with TLS and a token
        type = "text/plain; charset=utf-8";
        body = "ok\n";
      } else {
        status = "404 Not Found";
        body = "metrics are at /metrics, liveness at /healthz\n";
      }
    }
    std::string head = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                                    "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
    std::string all = head + body;
    size_t off = 0;
    while (off < all.size()) {
      ssize_t n = send(c, all.data() + off, all.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  }
  int fd_ = -1;
  int port_ = 0;
  std::function<std::string()> body_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

absl::StatusOr<int> Metrics::Serve(const std::string& address) {
  absl::MutexLock lock(&mu_);
  if (server_) return absl::FailedPreconditionError("metrics endpoint already serving");
  ASSIGN_OR_RETURN(server_, MetricsHttpServer::Start(address, [this] { return Text(); }));
  return server_->port();
}

int LocalRank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK", "MPI_LOCALRANKID"}) {
    const char* v = std::getenv(name);
    int r = 0;
    if (v && absl::SimpleAtoi(v, &r) && r >= 0) return r;
  }
  return 0;
}

absl::StatusOr<int> Metrics::Serve(const MetricsConfig& config) {
  if (config.port == 0) return 0;
  return Serve(absl::StrCat(config.bind, ":", config.port + LocalRank()));
}

int Metrics::port() const {
  absl::MutexLock lock(&mu_);
  return server_ ? server_->port() : 0;
}

void Metrics::SetProcessLabels(const Labels& labels) {
  for (const auto& [k, v] : labels) {
    if (std::find(kAllowedLabels.begin(), kAllowedLabels.end(), k) == kAllowedLabels.end()) {
      throw std::invalid_argument("process label '" + k + "' is not an allowed label name");
    }
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [k, v] : labels) process_labels_[k] = v;
}

std::string Metrics::Text() const {
  Labels extra;
  {
    absl::MutexLock lock(&mu_);
    extra = process_labels_;
  }
  auto families = registry_->Collect();
  if (!extra.empty()) {
    for (auto& f : families) {
      for (auto& m : f.metric) {
        for (const auto& [k, v] : extra) {
          const bool has = std::any_of(m.label.begin(), m.label.end(), [&](const auto& l) { return l.name == k; });
          if (!has) m.label.push_back({k, v});
        }
        std::sort(m.label.begin(), m.label.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
      }
    }
  }
  prometheus::TextSerializer serializer;
  return serializer.Serialize(families);
}

}  // namespace rlhf

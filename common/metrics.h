// One metrics registry per process, exposed for Prometheus on one port.
//
// Naming rules (DESIGN.md), enforced at registration: names match rlhf_[a-z0-9_]+, base units as suffix
// (_seconds, _bytes), counters end in _total and nothing else does; label names come from a small fixed
// set (kAllowedLabels) so that no high-cardinality label (prompt ids, request ids) can be created.
// A violation is a programming error: the call throws std::invalid_argument.
//
// Thread-safety: every method is safe to call from any thread. Returned metric references live as long
// as the process.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/config/config.h"
#include "common/status.h"

namespace rlhf {

class MetricsHttpServer;

struct MetricsConfig {
  int64_t port = 0;              // port of the /metrics HTTP endpoint; 0 = not exposed
  std::string bind = "0.0.0.0";  // address the endpoint listens on
  static const config::Section<MetricsConfig>& Spec();
};

inline const std::vector<std::string> kAllowedLabels = {"role", "source", "stage", "kind", "rank",
                                                         "reason", "method", "code", "dtype", "split",
                                                         "worker"};  // worker: a rollout worker's index (bounded by the cluster)

using Labels = std::map<std::string, std::string>;

class Metrics {
 public:
  // The registry of this process.
  static Metrics& Process();

  prometheus::Counter& Counter(const std::string& name, const std::string& help, const Labels& labels = {});
  prometheus::Gauge& Gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  prometheus::Histogram& Histogram(const std::string& name, const std::string& help,
                                   const std::vector<double>& buckets, const Labels& labels = {});

  // Starts the HTTP endpoint (GET /metrics) on "host:port" (IPv4; port 0 picks a free one). Returns the
  // port it listens on.
  // FAILED_PRECONDITION when already serving; UNAVAILABLE when the port cannot be bound.
  absl::StatusOr<int> Serve(const std::string& address);
  // Serve() from config on config.port + this process's local rank (so that the ranks of one node do not
  // collide); does nothing when config.port == 0 (returns 0).
  absl::StatusOr<int> Serve(const MetricsConfig& config);
  // The port /metrics is served on; 0 when it is not.
  int port() const;
  // The metrics in Prometheus text format (what /metrics returns).
  std::string Text() const;
  // Labels every metric of this process carries in Text() (e.g. its role and rank), unless the metric has
  // that label itself. Adds to (or replaces values of) the labels set before; names must be allowed labels.
  void SetProcessLabels(const Labels& labels);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  Metrics();
  ~Metrics();
  // Checks the naming rules and that `name` is not registered as another kind.
  void Claim(const std::string& name, const std::string& kind, const Labels& labels) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<prometheus::Registry> registry_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::string> kinds_ ABSL_GUARDED_BY(mu_);  // name -> "counter" | "gauge" | "histogram"
  std::unique_ptr<MetricsHttpServer> server_ ABSL_GUARDED_BY(mu_);
  Labels process_labels_ ABSL_GUARDED_BY(mu_);
};

// This process's rank among the processes of its node under mpirun / torchrun (0 when started alone).
int LocalRank();

// Throws std::invalid_argument unless `name` and `labels` follow the naming rules for a metric of `kind`.
void CheckMetricName(const std::string& name, const std::string& kind, const Labels& labels);

}  // namespace rlhf

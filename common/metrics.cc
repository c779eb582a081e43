#include "common/metrics.h"

#include <prometheus/exposer.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <regex>
#include <sstream>
#include <stdexcept>

namespace rlhf {

const config::Section<MetricsConfig>& MetricsConfig::Spec() {
  static const auto* s = [] {
    auto* s = new config::Section<MetricsConfig>("metrics");
    s->Add("port", &MetricsConfig::port, "port of the Prometheus /metrics endpoint; 0 = not exposed",
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
Metrics::~Metrics() = default;

prometheus::Counter& Metrics::Counter(const std::string& name, const std::string& help, const Labels& labels) {
  CheckMetricName(name, "counter", labels);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = kinds_.emplace(name, "counter");
  if (!fresh && it->second != "counter") throw std::invalid_argument("metric '" + name + "' is a " + it->second);
  return prometheus::BuildCounter().Name(name).Help(help).Register(*registry_).Add(labels);
}

prometheus::Gauge& Metrics::Gauge(const std::string& name, const std::string& help, const Labels& labels) {
  CheckMetricName(name, "gauge", labels);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = kinds_.emplace(name, "gauge");
  if (!fresh && it->second != "gauge") throw std::invalid_argument("metric '" + name + "' is a " + it->second);
  return prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add(labels);
}

prometheus::Histogram& Metrics::Histogram(const std::string& name, const std::string& help,
                                          const std::vector<double>& buckets, const Labels& labels) {
  CheckMetricName(name, "histogram", labels);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = kinds_.emplace(name, "histogram");
  if (!fresh && it->second != "histogram") throw std::invalid_argument("metric '" + name + "' is a " + it->second);
  return prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_).Add(labels, buckets);
}

absl::StatusOr<int> Metrics::Serve(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  if (exposer_) return absl::FailedPreconditionError("metrics endpoint already serving");
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": ", e.what(),
                                               " (is the port in use? set metrics.port)"));
  }
  exposer_->RegisterCollectable(registry_);
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

absl::StatusOr<int> Metrics::Serve(const MetricsConfig& config) {
  if (config.port == 0) return 0;
  return Serve(absl::StrCat(config.bind, ":", config.port));
}

std::string Metrics::Text() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

}  // namespace rlhf

#include "services/scoring/service.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/rpc.h"

namespace rlhf::scoring {

const config::Section<ScorerServiceConfig>& ScorerServiceConfig::Spec() {
  static const auto* s = [] {
    using S = ScorerServiceConfig;
    auto* s = new config::Section<S>("scorer");
    s->Add("address", &S::address, "host:port of the gRPC server (rlhf serve scorer); loopback by default: another host needs TLS and a token (rpc.*) or rpc.insecure");
    s->Add("max_batch_tokens", &S::max_batch_tokens, "tokens of the samples merged into one scoring batch",
           config::AtLeast(1));
    s->Add("max_wait_ms", &S::max_wait_ms, "how long the first request of a batch waits for others", config::AtLeast(0));
    s->Add("max_queue_samples", &S::max_queue_samples, "queued samples beyond which requests get RESOURCE_EXHAUSTED",
           config::AtLeast(1));
    s->Add("max_request_samples", &S::max_request_samples, "samples one request may carry", config::AtLeast(1));
    return s;
  }();
  return *s;
}

struct ScorerService::Pending {
  std::vector<Sample> samples;
  bool want_ref = false;
  std::chrono::system_clock::time_point deadline;
  bool abandoned = false;  // the handler gave up (deadline or cancel): skip it
  bool done = false;
  absl::Status status;
  std::vector<ScoreOutcome> outcomes;
  int64_t tokens = 0;
};

ScorerService::ScorerService(std::unique_ptr<Scorer> scorer, ScorerServiceConfig config)
    : scorer_(std::move(scorer)), config_(std::move(config)) {
  worker_ = std::thread([this] { Worker(); });
}

ScorerService::~ScorerService() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    for (auto& p : queue_) p->done = true, p->status = absl::UnavailableError("scorer shutting down");
  }
  cv_.notify_all();
  worker_.join();
}

grpc::Status ScorerService::Score(grpc::ServerContext* context, const ScoreRequest* request, ScoreReply* reply) {
  auto& m = Metrics::Process();
  static auto& requests = m.Counter("rlhf_scorer_requests_total", "Score calls received", {{"role", "scorer"}});
  static auto& rejected = m.Counter("rlhf_scorer_rejected_total", "Score calls refused because the queue was full",
                                    {{"role", "scorer"}});
  requests.Increment();
  if (request->samples_size() > config_.max_request_samples) {
    return ToGrpc(absl::InvalidArgumentError(absl::StrCat("a request may carry at most ", config_.max_request_samples,
                                                          " samples (scorer.max_request_samples)")));
  }
  for (int i = 0; i < request->samples_size(); ++i) {
    absl::Status v = scorer_->Validate(request->samples(i), request->want_ref_logprobs());
    if (!v.ok()) return ToGrpc(absl::InvalidArgumentError(absl::StrCat("sample ", i, ": ", v.message())));
  }
  if (request->want_ref_logprobs() && !scorer_->has_reference()) {
    return ToGrpc(absl::FailedPreconditionError("this scorer has no reference model (reward.reference_model)"));
  }
  auto p = std::make_shared<Pending>();
  p->samples.assign(request->samples().begin(), request->samples().end());
  p->want_ref = request->want_ref_logprobs();
  p->deadline = context->deadline();
  for (const auto& s : p->samples) p->tokens += s.prompt_ids_size() + s.completion_ids_size();
  const int64_t n = static_cast<int64_t>(p->samples.size());
  {
    std::unique_lock<std::mutex> l(mu_);
    if (queued_samples_ + n > config_.max_queue_samples && queued_samples_ > 0) {
      rejected.Increment();
      return ToGrpc(absl::ResourceExhaustedError(absl::StrCat("the scorer's queue holds ", queued_samples_,
                                                              " samples (scorer.max_queue_samples): retry later")));
    }
    queue_.push_back(p);
    queued_samples_ += n;
    cv_.notify_all();
    // Wait for the result, the deadline, or a cancelled call.
    while (!p->done) {
      cv_.wait_for(l, std::chrono::milliseconds(50));
      if (p->done) break;
      if (context->IsCancelled() || std::chrono::system_clock::now() > p->deadline) {
        p->abandoned = true;
        // Still queued: take it out; in flight: the worker finishes it and nobody reads it.
        for (auto it = queue_.begin(); it != queue_.end(); ++it) {
          if (*it == p) {
            queue_.erase(it);
            queued_samples_ -= n;
            break;
          }
        }
        return ToGrpc(absl::DeadlineExceededError("the deadline passed while the request waited to be scored"));
      }
    }
  }
  if (!p->status.ok()) return ToGrpc(p->status);
  for (size_t i = 0; i < p->samples.size(); ++i) {
    auto* r = reply->add_results();
    *r->mutable_sample() = std::move(p->samples[i]);
    const auto& o = p->outcomes[i];
    if (!o.status.ok()) {
      r->mutable_error()->set_code(static_cast<int32_t>(o.status.code()));
      r->mutable_error()->set_message(std::string(o.status.message()));
    }
    r->set_kl_behaviour(o.kl_behaviour);
  }
  return grpc::Status::OK;
}

void ScorerService::Worker() {
  auto& m = Metrics::Process();
  auto& scored = m.Counter("rlhf_scorer_samples_total", "samples scored", {{"role", "scorer"}});
  auto& batch_seconds = m.Histogram("rlhf_scorer_batch_duration_seconds", "time to score one merged batch",
                                    {0.01, 0.05, 0.1, 0.5, 1, 5, 30}, {{"role", "scorer"}});
  auto& queue_gauge = m.Gauge("rlhf_scorer_queue_samples", "samples waiting to be scored", {{"role", "scorer"}});
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    // Give the first request up to max_wait_ms to gather company, unless the budget is already full.
    const auto first_arrival = std::chrono::steady_clock::now();
    auto budget_full = [&] {
      int64_t t = 0;
      for (const auto& p : queue_) t += p->tokens;
      return t >= config_.max_batch_tokens;
    };
    while (!stop_ && !budget_full() &&
           std::chrono::steady_clock::now() - first_arrival < std::chrono::duration<double, std::milli>(config_.max_wait_ms)) {
      cv_.wait_for(l, std::chrono::duration<double, std::milli>(config_.max_wait_ms));
    }
    if (stop_) return;
    // Take whole requests up to the token budget (at least one).
    std::vector<std::shared_ptr<Pending>> batch;
    int64_t tokens = 0;
    while (!queue_.empty() && (batch.empty() || tokens + queue_.front()->tokens <= config_.max_batch_tokens)) {
      auto p = queue_.front();
      queue_.pop_front();
      queued_samples_ -= static_cast<int64_t>(p->samples.size());
      if (p->abandoned) continue;
      tokens += p->tokens;
      batch.push_back(p);
    }
    queue_gauge.Set(static_cast<double>(queued_samples_));
    if (batch.empty()) continue;
    // Score outside the lock: one merged vector, results split back per request.
    l.unlock();
    std::vector<Sample> merged;
    std::vector<int32_t> groups;  // the request of each sample: pairwise judging stays inside a request
    bool want_ref = false;
    for (auto& p : batch) {
      want_ref = want_ref || p->want_ref;
      for (auto& s : p->samples) {
        merged.push_back(std::move(s));
        groups.push_back(static_cast<int32_t>(&p - batch.data()));
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto outcomes = scorer_->Score(merged, want_ref, groups);
    batch_seconds.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    l.lock();
    size_t k = 0;
    for (auto& p : batch) {
      const size_t cnt = p->samples.size();
      if (!outcomes.ok()) {
        p->status = outcomes.status();
      } else {
        p->outcomes.assign(outcomes->begin() + static_cast<std::ptrdiff_t>(k),
                           outcomes->begin() + static_cast<std::ptrdiff_t>(k + cnt));
      }
      for (size_t i = 0; i < cnt; ++i) {
        p->samples[i] = std::move(merged[k + i]);
        if (!p->want_ref) p->samples[i].clear_ref_logprobs();
      }
      k += cnt;
      p->done = true;
      scored.Increment(static_cast<double>(cnt));
    }
    cv_.notify_all();
  }
}

}  // namespace rlhf::scoring

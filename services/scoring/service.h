// rlhf.Scorer over gRPC: requests from many clients are queued, merged into batches of up to
// `max_batch_tokens` (waiting at most `max_wait_ms` for more), scored by one worker thread, and answered
// each with its own results in its own order.
//   INVALID_ARGUMENT   a sample the models cannot take (ids outside the vocabulary, too long, ...)
//   RESOURCE_EXHAUSTED the queue already holds `max_queue_samples` samples (back off and retry)
//   DEADLINE_EXCEEDED  the client's deadline passed while the request waited (its samples are skipped)
//   per sample error   a source failed for that sample (ScoredSample.error); the others are scored
// Thread-safety: Score is called concurrently by gRPC's threads; one worker thread runs the Scorer.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "common/config/config.h"
#include "rlhf/scoring.grpc.pb.h"
#include "services/scoring/scorer.h"

namespace rlhf::scoring {

struct ScorerServiceConfig {
  std::string address = "127.0.0.1:50052";  // host:port of the gRPC server (loopback unless told)
  int64_t max_batch_tokens = 16384;       // tokens of the samples merged into one scoring batch
  double max_wait_ms = 5;                 // how long the first request of a batch waits for company
  int64_t max_queue_samples = 1024;       // queued samples beyond which requests get RESOURCE_EXHAUSTED
  int64_t max_request_samples = 4096;     // samples one request may carry
  static const config::Section<ScorerServiceConfig>& Spec();  // under "scorer"
};

class ScorerService final : public ::rlhf::Scorer::Service {
 public:
  ScorerService(std::unique_ptr<Scorer> scorer, ScorerServiceConfig config);
  ~ScorerService() override;  // stops the worker; queued requests get UNAVAILABLE

  grpc::Status Score(grpc::ServerContext* context, const ScoreRequest* request, ScoreReply* reply) override;

 private:
  struct Pending;
  void Worker();
  std::unique_ptr<Scorer> scorer_;
  ScorerServiceConfig config_;
  std::mutex mu_;
  std::condition_variable cv_;  // a request arrived, a batch is done, or stop
  std::deque<std::shared_ptr<Pending>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_samples_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

}  // namespace rlhf::scoring

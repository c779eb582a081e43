// The coordinator's side of the rollout and scoring services: gRPC clients that retry what may be retried
// and report, per prompt or per sample, what could not be done. The same classes talk to in-process
// servers (the embedded single-process default) and to servers in other processes.
//
// Retry meaning of codes (DESIGN.md): UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried
// with backoff (another rollout worker first, when there is one); ABORTED from a rollout worker (samples of
// another policy version) makes the pool publish the current weights to that worker and retry; any other
// code is final for the prompts or samples it concerns.
// Thread-safety: one call at a time per object.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <list>
#include <mutex>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "common/rpc.h"
#include "common/status.h"
#include "rlhf/rollout.grpc.pb.h"
#include "rlhf/scoring.grpc.pb.h"

namespace rlhf::coordinator {

struct RetryPolicy {
  int64_t max_attempts = 3;      // tries of one call (or one prompt chunk) before its prompts fail
  double backoff_seconds = 0.2;  // wait before the second try; doubled for each further one
};

// True for the codes that are worth another try.
bool Retryable(absl::StatusCode code);
// The wait before retry number `attempt` + 1: backoff_seconds doubled `attempt` times (at most 1024x).
double BackoffSeconds(const RetryPolicy& r, int64_t attempt);
// Sleeps BackoffSeconds(r, attempt).
void Backoff(const RetryPolicy& r, int64_t attempt);

// How the prompts of a Generate call go to the workers: as leases (a run of prompts with a deadline).
// A worker takes the next waiting lease when it has finished its last one, so fast workers do more; a lease
// whose worker misses the deadline (dead, hung, stopped) is handed to another worker, and its result, should
// it still come, is refused and counted.
struct LeasePolicy {
  int64_t prompts = 0;  // prompts per lease; 0 = the call's prompts in two leases per worker
  double seconds = 0;   // deadline of a lease; 0 = 8x the time per prompt measured on the leases so far times
                        // the lease's prompts, at least 10 s (the rpc deadline until a lease has finished)
};

class RolloutPool {
 public:
  // Makes `stub`'s worker hold the weights of policy `version` (a weight push).
  using Publisher = std::function<absl::Status(Rollout::Stub* stub, int64_t version)>;

  RolloutPool(std::vector<std::shared_ptr<grpc::Channel>> channels, RpcConfig rpc, RetryPolicy retry,
              Publisher publish);
  // Cancels the calls still in flight (a stopped worker's) and waits for their threads.
  ~RolloutPool();
  void SetLeases(LeasePolicy leases) { leases_ = leases; }
  // Makes the workers `members` (indices) hold the weights of `version` at once (a collective sync).
  using GroupPublisher = std::function<absl::Status(int64_t version, const std::vector<size_t>& members)>;
  // With a group publisher, every weight push is one sync of all active workers instead of a push to one,
  // and the pool keeps a membership: after a failed sync, the workers that do not answer Health are dropped
  // (no more chunks, not in the group) and the others sync again at once; a dropped worker that answers
  // again rejoins at the next Sync and takes that version with the others.
  void SetGroupPublisher(GroupPublisher publish_all) { publish_all_ = std::move(publish_all); }
  // Whether Generate brings a worker that answers with an older version than asked to that version itself
  // (the default). The asynchronous loop turns it off: there the learner may be training while a batch is
  // generated, so only the step loop pushes weights (between learner steps), and a worker that is behind
  // has its prompts tried on another worker instead.
  void SetRefreshBehind(bool on) { refresh_ = on; }

  struct Result {
    std::vector<std::vector<Sample>> groups;  // per prompt: its n samples, ordered by sample_index
    std::vector<absl::Status> errors;         // per prompt: OK, or why it has no samples
    std::vector<int64_t> relets;              // per prompt: times its lease moved to another try
    int64_t tokens = 0;                       // completion tokens generated
    double seconds = 0;                       // wall time of the call
    int64_t expired = 0;                      // leases that missed their deadline (handed out again)
  };
  // n samples for each prompt with the weights of `version` or newer (a worker swaps new weights in only
  // between groups of prompts, and only the asynchronous loop syncs while a batch is generated), the
  // prompts going to the workers as leases (LeasePolicy), one lease in flight per worker. Every sample is
  // checked: the prompt it belongs to, n distinct sample indices, and the policy version. A failed lease is
  // tried again on the next idle worker (after a backoff for the one that failed). Never fails as a whole:
  // failures are per prompt. Several calls may run at once (the asynchronous loop evaluates while it
  // generates the next batch).
  Result Generate(const std::vector<Prompt>& prompts, const SamplingParams& params, int32_t n, int64_t version);

  // Brings every worker to `version`, asking Health and pushing weights where it differs (everywhere with
  // `force`: a worker that reports the version may still hold other weights, e.g. at the start of a run).
  absl::Status Sync(int64_t version, bool force = false);

  size_t size() const { return stubs_.size(); }
  std::vector<size_t> active() const;  // workers that get chunks (all of them without a group publisher)
  int64_t dropped() const;             // times a worker was dropped
  int64_t rejoined() const;            // times a dropped worker came back
  int64_t leases_expired() const;      // leases that missed their deadline, over the pool's life
  int64_t late_results_refused() const;  // results of expired leases that came in after all (not used)

 private:
  // One try of a chunk on worker w: the samples grouped per prompt of the chunk.
  absl::StatusOr<std::vector<std::vector<Sample>>> Call(size_t w, const std::vector<Prompt>& chunk,
                                                       const SamplingParams& params, int32_t n, int64_t version,
                                                       grpc::ClientContext* ctx);
  // The deadline of a lease of `prompts` prompts (see LeasePolicy).
  double LeaseSeconds(size_t prompts) const;
  // Whether worker w has a call past its lease's deadline still open (it gets no lease until that ends).
  bool Overdue(size_t w) const;
  // Counts and reports a result of worker w for an expired lease, which is not used.
  void RefuseLate(size_t w);
  // Brings worker w to `version` after it answered with another one (with a group publisher: a sync of
  // the group). Several chunks may find the same stale worker at once: one of them pushes, the others find
  // the version there (asked by Health) and push nothing.
  absl::Status Refresh(size_t w, int64_t version);
  // Sync with a group publisher (see SetGroupPublisher); the caller holds group_mu_.
  absl::Status SyncGroupLocked(int64_t version, bool force);
  // Health of worker w within `seconds` (at most rpc's deadline).
  absl::Status Probe(size_t w, double seconds, bool wait_for_ready) const;
  // Probes `workers` at once; `reconnect_now` resets each channel's reconnect backoff first and waits for it
  // to connect (up to `seconds`). One status per worker, in order.
  std::vector<absl::Status> ProbeAll(const std::vector<size_t>& workers, double seconds, bool reconnect_now) const;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<Rollout::Stub>> stubs_;
  RpcConfig rpc_;
  RetryPolicy retry_;
  Publisher publish_;
  std::vector<std::unique_ptr<std::mutex>> push_mu_;  // per worker: one weight push at a time
  GroupPublisher publish_all_;
  bool refresh_ = true;  // see SetRefreshBehind
  std::mutex group_mu_;  // one group sync at a time
  std::vector<size_t> synced_members_;  // the members and version of the last good group sync (under group_mu_)
  int64_t synced_version_ = -1;
  mutable std::mutex members_mu_;
  std::vector<bool> active_;            // per worker (under members_mu_)
  int64_t dropped_ = 0, rejoined_ = 0;  // under members_mu_
  double seconds_per_prompt_ = 0;       // of the finished leases, a moving average (under members_mu_)
  std::vector<int64_t> overdue_;        // per worker: calls past their lease's deadline, still open (under members_mu_)
  LeasePolicy leases_;
  std::atomic<int64_t> expired_{0}, late_refused_{0};
  // Generate calls in flight or finished and not yet joined; each thread outlives its Generate when its
  // worker is stopped past the lease's deadline.
  struct InFlight {
    std::shared_ptr<grpc::ClientContext> ctx;
    std::shared_ptr<std::atomic<bool>> finished;
    std::thread thread;
  };
  std::mutex calls_mu_;
  std::list<InFlight> calls_;
};

class ScorerClient {
 public:
  // `max_request_samples`: samples per Score call (larger batches go in several calls).
  ScorerClient(std::shared_ptr<grpc::Channel> channel, RpcConfig rpc, RetryPolicy retry,
               int64_t max_request_samples = 512);
  // Scorer replicas: a batch's calls are spread over them (one lane of calls per replica, at once), and a
  // call that fails (unavailable, deadline, overloaded) moves to the next replica at once; a replica that
  // failed within the last 2 s is passed over while another may answer.
  ScorerClient(std::vector<std::shared_ptr<grpc::Channel>> channels, RpcConfig rpc, RetryPolicy retry,
               int64_t max_request_samples = 512);

  struct Result {
    std::vector<Sample> samples;       // the input, with rewards (and ref log-probs) where scored
    std::vector<absl::Status> errors;  // per sample: OK, or why it has no reward
    double seconds = 0;
  };
  // Scores `samples` (groups of one prompt should be in one call for pairwise judges: chunks never split a
  // run of samples with the same prompt_id unless it alone exceeds the limit). A call that still fails after
  // the retries gives its error to each of its samples.
  Result Score(std::vector<Sample> samples, bool want_ref);

 private:
  // One call, starting at replica `first`, with failover and retries.
  absl::Status ScoreChunk(size_t first, const ScoreRequest& req, ScoreReply* reply);
  std::vector<std::unique_ptr<Scorer::Stub>> stubs_;
  RpcConfig rpc_;
  RetryPolicy retry_;
  int64_t max_request_samples_;
  std::unique_ptr<std::atomic<double>[]> failed_at_;  // per replica: when a call to it last failed (Now())
  std::atomic<size_t> rotation_{0};                   // where the next call's first chunk goes
};

}  // namespace rlhf::coordinator

// The coordinator of online RL: owns the prompt cursor and ledger (services/coordinator/ledger.h) and
// turns them into learner batches, strictly on-policy: the samples of a batch come from the policy version
// the caller names (the weights of the last finished step).
//
// NextBatch leases prompts to the rollout pool, sends the samples to the scorer and sorts each group:
//   dropped   a rollout worker refused the prompt, or the scorer failed one of its samples (a final error,
//             not an unreachable service: that stops the step with UNAVAILABLE and keeps the prompts)
//   filtered  dynamic sampling (DAPO) is on and every sample of the group got the same reward
//   accepted  part of the batch; it becomes trained when the caller reports the learner step (MarkTrained)
// and leases more prompts until the batch holds rollout_batch_size accepted groups or the epoch has no
// pending prompt left (a batch never spans two epochs).
//
// Asynchronous RL: a batch may be generated while the learner trains the previous one, so its samples may
// be older than the policy that trains them. DropStale hands back the groups more than the bound behind
// (pending again, counted `stale`) before a batch is trained.
//
// Thread-safety: the ledger is guarded, so one thread may generate the next batch (NextBatch) while
// another settles the previous one (MarkTrained, Discard, Release, DropStale, State), or tops it up.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "services/coordinator/clients.h"
#include "services/coordinator/ledger.h"

namespace rlhf::coordinator {

struct CoordinatorOptions {
  int64_t rollout_batch_size = 8;  // accepted prompt groups per learner step
  int32_t group_size = 4;          // samples per prompt (G)
  SamplingParams params;           // sampling of the rollouts
  int64_t epochs = 1;              // passes over the prompts
  bool dynamic_sampling = false;   // filter groups whose rewards are all equal (DAPO)
  bool want_ref_logprobs = false;  // ask the scorer for reference log-probs
};

struct StepBatch {
  std::vector<int64_t> prompts;  // dataset positions of the accepted groups, in batch order
  std::vector<Sample> samples;   // their samples, group after group (group_size each), scored
  int64_t epoch = 0;
  // Rollout statistics of everything generated for this batch (accepted, filtered and dropped groups).
  int64_t generated_samples = 0, generated_tokens = 0, filtered = 0, dropped = 0;
  int64_t scored_groups = 0, equal_reward_groups = 0;  // groups scored whole; of them, all rewards equal
  double generate_seconds = 0, score_seconds = 0;
  double reward_sum = 0;  // over the scored samples of every group (for the mean reward of the rollouts)
  int64_t rewarded = 0;
  bool empty() const { return prompts.empty(); }
  // Adds the groups and figures of `more` (of the same epoch) after this batch's.
  void Append(StepBatch&& more);
};

class Coordinator {
 public:
  // `prompts`: the training prompts; prompt_index must be the position in this vector. The pool and the
  // scorer are not owned and must outlive the coordinator.
  Coordinator(CoordinatorOptions options, std::vector<Prompt> prompts, uint64_t seed, RolloutPool* pool,
              ScorerClient* scorer);

  // The next learner batch, generated with policy `version` or newer, of at most `max_groups` groups
  // (0 = rollout_batch_size). An empty batch when every epoch is done, or when the epoch's remaining
  // prompts are all leased (to a batch not yet settled). UNAVAILABLE when the rollout workers or the scorer stay unreachable after the retries, FAILED_PRECONDITION
  // when one of them cannot serve the run at all (e.g. the scorer refuses the code reward on a machine
  // without isolation); the batch's leases are handed back first, so nothing is lost. INTERNAL for a
  // ledger that does not add up.
  absl::StatusOr<StepBatch> NextBatch(int64_t version, int64_t max_groups = 0);
  // Removes from `batch` the groups with a sample generated before policy `min_version` and hands their
  // prompts back (pending, counted as `stale` in the ledger); returns how many groups it removed.
  absl::StatusOr<int64_t> DropStale(StepBatch& batch, int64_t min_version);
  // The batch will not be trained now (the run stops before it): its prompts are pending again.
  absl::Status Release(const StepBatch& batch);
  // The learner step on `batch` succeeded: its prompts are trained, except the groups at the positions of
  // `refused` (the learner refused them), which are dropped with the reason given.
  absl::Status MarkTrained(const StepBatch& batch, const std::map<size_t, std::string>& refused = {});
  // The batch will not be trained (e.g. too small to share among the learner ranks): its prompts are
  // recorded as filtered with `reason`.
  absl::Status Discard(const StepBatch& batch, const std::string& reason);

  bool Done() const;  // every epoch finished
  // The ledger, unguarded: only while no other thread uses this coordinator (tests).
  const Ledger& ledger() const { return ledger_; }
  // The ledger's counts (guarded).
  LedgerCounts Totals() const;
  LedgerCounts Current() const;
  int64_t epoch() const;
  int64_t num_prompts() const { return static_cast<int64_t>(prompts_.size()); }
  absl::Status Check() const;
  // Counts a ledger event (guarded; see LedgerCounts::events).
  void Count(const std::string& event, int64_t n = 1);
  const CoordinatorOptions& options() const { return options_; }

  // Checkpoint state (the ledger) and its restore; see Ledger::FromJson.
  nlohmann::json State() const;
  absl::Status Restore(const nlohmann::json& state);

 private:
  CoordinatorOptions options_;
  std::vector<Prompt> prompts_;
  uint64_t seed_;
  RolloutPool* pool_;
  ScorerClient* scorer_;
  mutable std::mutex mu_;  // guards ledger_
  Ledger ledger_;
};

}  // namespace rlhf::coordinator

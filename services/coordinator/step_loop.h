// The step loop of online RL, in one place: lease prompts, generate (rollout pool), score (scorer), sort
// the groups (ledger), one learner step (learner client), settle the ledger, publish the new weights to
// the rollout workers, evaluate on held-out prompts, checkpoint, and write summary.json at the end.
//
// Every role is behind a client: the rollout workers and the scorer behind `Roles`' channels, the learner
// behind a LearnerClient. Embedded roles are served over in-process channels and remote ones over TCP,
// so this loop has no embedded / remote branches.
//
// max_staleness 0 (the default) is strictly on-policy: every batch is generated with the learner's current
// version, and the workers take the new version before the next batch. max_staleness k > 0 overlaps the
// two: a thread generates and scores the next batches (up to k ahead) while the learner trains, and the
// workers take each new version between their groups of prompts. A sample is trained at most k versions
// after the policy that generated it: a group that is older is handed back to the ledger (counted
// `stale`) and generated again, and the learner corrects for the policy lag with the behaviour log-probs
// (rl.tis_cap; ALGORITHMS.md, off-policy samples).
//
// Resume: the learner is the source of truth. The loop starts at the learner's version, which must be the
// step of its newest checkpoint; that checkpoint holds this loop's state (the ledger, the throughput
// counters, the first evaluation), handed back by the learner's State.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/eval.h"
#include "services/coordinator/learnability.h"
#include "services/coordinator/learner_client.h"
#include "services/coordinator/roles.h"
#include "services/coordinator/weight_plane.h"

namespace rlhf::coordinator {

struct StepLoopOptions {
  std::string stage;              // the stage's name: logs, metrics, summary.json; the learner must serve it
  std::string stage_dir;          // eval_before.jsonl, eval_step_N.jsonl and eval_after.jsonl go here
  std::string summary_path;       // summary.json
  CoordinatorOptions coordinator; // batch size, group size, sampling, epochs, dynamic sampling, reference
  int64_t steps = 0;              // policy steps; 0 = until every epoch is done
  int64_t total_estimate = 0;     // about how many steps the run makes (progress lines)
  int64_t save_every = 0;         // checkpoint every N steps (and at the end); 0 = at the end only
  int64_t log_every = 1;          // a progress line every N steps
  uint64_t seed = 0;              // run seed: the ledger's order, step s trains with seed + s
  int64_t max_staleness = 0;      // k: versions a sample may lag the policy that trains it (0 = on-policy)
  std::string sample_log_path;    // samples.jsonl: per step, each trained sample's prompt and version ("" = none)
  EvalConfig eval;                // held-out evaluation before, every eval.every steps, and after
  LearnabilityConfig learnability;  // the check before the first step and the equal-rewards alarm (rl.precheck_*)
  int64_t weight_chunk_bytes = 4 << 20;  // weight chunks from the learner to the rollout workers (grpc transport)
  WeightsConfig weights;                  // how the workers get the weights (weights.*)
  std::string weights_store_host;         // collective: the store host the learner and workers connect to
  RetryPolicy retry;              // of the calls to the rollout workers and the scorer
  LeasePolicy leases;             // how prompts go to the rollout workers (size and deadline of a lease)
  std::string learner_label = "embedded";  // how summary.json names the learner (an address when remote)
  std::string processes_path;             // processes.json: every process of the run ("" = none written)
  std::vector<std::string> rollout_addresses;  // of the remote workers, in the order of roles' channels
  std::vector<std::string> scorer_addresses;  // of the remote scorer replicas, in the order of roles' channels
  // processes.json entries from the launcher (`rlhf run`): merged into the entry of the same role and index
  // (adding e.g. its rank), added where there is none (learner ranks above 0). JSON objects.
  std::vector<std::string> other_processes;
};

struct StepLoopHooks {
  // Every step's figures (the learner's and the loop's), in step order.
  std::function<void(int64_t step, const std::map<std::string, double>& metrics)> log_step;
  // The loop starts at policy version `step`: drop whatever a log holds after it.
  std::function<absl::Status(int64_t step)> resume_at = [](int64_t) { return absl::OkStatus(); };
  // Called before the rollout workers take `version` (the fault-injection seam of weight syncs).
  std::function<void(int64_t version)> before_sync = [](int64_t) {};
  // Called after the learner has committed the checkpoint of `step` (the fault-injection seam of resumes).
  std::function<void(int64_t step)> after_checkpoint = [](int64_t) {};
};

// Runs the stage to its end (rl.steps, or every epoch); returns the policy folder the learner saved.
// FAILED_PRECONDITION when the learner serves another stage or group size, or stands at a version that is
// not its checkpoint's; the errors of the roles otherwise (the ledger never loses a prompt).
absl::StatusOr<std::string> RunStepLoop(const StepLoopOptions& options, Roles& roles, LearnerClient& learner,
                                        std::vector<Prompt> train_prompts, const std::vector<Prompt>& eval_prompts,
                                        const StepLoopHooks& hooks);

}  // namespace rlhf::coordinator

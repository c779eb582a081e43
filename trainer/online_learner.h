// The learner of an online stage as its own process: `rlhf serve learner` serves rlhf.Learner
// (proto/rlhf/learner.proto) and `rlhf train` with roles.learner_address coordinates against it.
//
// Server side (ServeLearner): rank 0 of the learner's process group answers the RPCs; each Train,
// Checkpoint and Finish is broadcast to the other ranks (c10d), which train on their shard of the batch
// and take part in the checkpoint. While no call comes, rank 0 sends a keep-alive every few seconds, so the
// other ranks' collectives never reach their timeout however long the coordinator generates.
//
// The learner's checkpoint holds the coordinator's state (ledger, counters) beside its own, so a run resumes
// from one place: restart `rlhf serve learner --resume`, then the coordinator, which takes the version and
// its state from the learner (State).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/comm/group.h"
#include "common/rpc.h"
#include "rlhf/learner.grpc.pb.h"
#include "rollout/weight_client.h"
#include "services/coordinator/clients.h"

namespace rlhf::trainer {

// What the learner of a stage does; ServeLearner calls these on the right ranks.
struct LearnerHooks {
  std::string stage;
  int64_t group_size = 1;
  int64_t version = 0;     // policy steps taken (from the checkpoint when resumed)
  std::string extra_json;  // the coordinator's state of that checkpoint, "" when none
  // One update on this rank's shard of a batch (every rank).
  std::function<absl::StatusOr<std::map<std::string, double>>(const std::vector<Sample>&, uint64_t seed)> step;
  // A checkpoint at `step` holding the coordinator's `extra_json` (every rank).
  std::function<absl::Status(int64_t step, const std::string& extra_json)> checkpoint;
  // The stage's output models; returns the policy folder (every rank).
  std::function<absl::StatusOr<std::string>()> finish;
  // The current policy as weight chunks (rank 0).
  std::function<bool(int64_t version, int64_t chunk_bytes, const rollout::ChunkWriter&)> weights;
};

// Serves the stage on `address` (rank 0) until a Finish call has been answered.
absl::Status ServeLearner(comm::Group& group, const RpcConfig& rpc, const std::string& address, LearnerHooks hooks);

// The coordinator's client of a learner process.
class RemoteLearner {
 public:
  RemoteLearner(std::shared_ptr<grpc::Channel> channel, RpcConfig rpc, coordinator::RetryPolicy retry);
  // Waits (with the retry policy) for the learner to answer; its stage, version and saved coordinator state.
  absl::StatusOr<LearnerStateReply> State();
  absl::StatusOr<TrainReply> Train(int64_t step, const std::vector<Sample>& samples, uint64_t seed);
  // The policy of the learner's current version, as the chunks a rollout worker takes.
  absl::StatusOr<std::vector<WeightChunk>> Weights(int64_t chunk_bytes);
  absl::Status Checkpoint(int64_t step, const std::string& extra_json);
  absl::StatusOr<std::string> Finish();

 private:
  std::unique_ptr<rlhf::Learner::Stub> stub_;
  RpcConfig rpc_;
  coordinator::RetryPolicy retry_;
};

}  // namespace rlhf::trainer

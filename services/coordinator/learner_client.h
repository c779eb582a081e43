// The coordinator's client of the learner (rlhf.Learner, proto/rlhf/learner.proto). The same class talks to
// the learner of `rlhf train` served in process (the embedded default) and to `rlhf serve learner` in
// another process, so the step loop has one path for both.
// Thread-safety: one call at a time.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "common/rpc.h"
#include "common/status.h"
#include "rlhf/learner.grpc.pb.h"
#include "services/coordinator/clients.h"

namespace rlhf::coordinator {

class LearnerClient {
 public:
  // Writes one chunk; false when the stream it feeds broke.
  using ChunkSink = std::function<bool(const WeightChunk&)>;

  LearnerClient(std::shared_ptr<grpc::Channel> channel, RpcConfig rpc, RetryPolicy retry);

  // Waits (with the retry policy) for the learner to answer; its stage, version and saved coordinator state.
  absl::StatusOr<LearnerStateReply> State();
  // One policy step on `samples` (whole groups); the learner must be at version `step`. Not retried: a
  // step is not idempotent.
  absl::StatusOr<TrainReply> Train(int64_t step, const std::vector<Sample>& samples, uint64_t seed);
  // Streams the policy of the learner's current version as weight chunks (at most `chunk_bytes` of data
  // each, without a commit chunk) into `sink`, one at a time: the coordinator never holds a whole copy.
  // UNAVAILABLE when `sink` stops the stream; the learner's error when it fails.
  absl::Status StreamWeights(int64_t chunk_bytes, const ChunkSink& sink);
  // The learner joins a weight group as its sender (rank 0), and sends its current `version` in it; each
  // call waits up to `seconds` for the others (see services/coordinator/weight_plane.h).
  absl::StatusOr<WeightGroupReply> JoinWeightGroup(const WeightGroupSpec& spec, double seconds);
  absl::StatusOr<UpdateWeightsReply> BroadcastWeights(int64_t version, int64_t generation, double seconds);
  absl::Status LeaveWeightGroup(int64_t generation, double seconds);
  // A checkpoint of the learner at `step`, holding the coordinator's state `extra_json`.
  absl::Status Checkpoint(int64_t step, const std::string& extra_json);
  // The learner saves the stage's models and ends the stage; returns the policy folder.
  absl::StatusOr<std::string> Finish();

 private:
  std::unique_ptr<rlhf::Learner::Stub> stub_;
  RpcConfig rpc_;
  RetryPolicy retry_;
};

}  // namespace rlhf::coordinator

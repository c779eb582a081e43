// The learner of an online stage behind rlhf.Learner (proto/rlhf/learner.proto), whichever process it is in:
// `rlhf train` serves it in process to its own step loop (the embedded default), `rlhf serve learner`
// serves it on an address to a coordinator elsewhere. The step loop (services/coordinator/step_loop.h)
// talks to both through the same client.
//
// Rank 0 of the learner's process group answers the RPCs; each Train, Checkpoint and Finish is broadcast
// to the other ranks (c10d), which train on their shard of the batch and take part in the checkpoint.
// While no call comes, rank 0 sends a keep-alive every few seconds, so the other ranks' collectives never
// reach their timeout however long the rollouts take.
//
// The learner's checkpoint holds the coordinator's state (ledger, counters) beside its own, so a run resumes
// from one place: the learner restores its checkpoint, and the step loop takes the version and its state
// from the learner (State).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/comm/group.h"
#include "common/rpc.h"
#include "rlhf/learner.grpc.pb.h"
#include "rollout/weight_client.h"

namespace rlhf::trainer {

// What the learner of a stage does; the service calls these on the right ranks.
struct LearnerHooks {
  std::string stage;
  int64_t group_size = 1;
  int64_t version = 0;     // policy steps taken (from the checkpoint when resumed)
  std::string extra_json;  // the coordinator's state of that checkpoint, "" when none
  // Refuses a batch before any rank starts on it (rank 0, on the whole batch); may be empty.
  std::function<absl::Status(const std::vector<Sample>&)> check;
  // One update on this rank's shard of a batch (every rank).
  std::function<absl::StatusOr<std::map<std::string, double>>(const std::vector<Sample>&, uint64_t seed)> step;
  // A checkpoint at `step` holding the coordinator's `extra_json` (every rank).
  std::function<absl::Status(int64_t step, const std::string& extra_json)> checkpoint;
  // The stage's output models; returns the policy folder (every rank).
  std::function<absl::StatusOr<std::string>()> finish;
  // The current policy as weight chunks (rank 0).
  std::function<bool(int64_t version, int64_t chunk_bytes, const rollout::ChunkWriter&)> weights;
  // The current policy's parameters by name, for the weight group (rank 0).
  std::function<comm::NamedTensors()> parameters;
};

class LearnerServer;

// Rank 0's side: the service, its server and the keep-alive thread. Not thread-safe itself (one owner);
// the service answers calls from any thread.
class LearnerHost {
 public:
  // Serves the stage in process, and on `address` too when it is not empty. Rank 0 only.
  static absl::StatusOr<std::unique_ptr<LearnerHost>> Start(comm::Group& group, const RpcConfig& rpc,
                                                            const std::string& address, LearnerHooks hooks);
  ~LearnerHost();  // stops serving; a host that never finished tells the other ranks to stop

  std::shared_ptr<grpc::Channel> InProcessChannel() const;
  int port() const;  // of `address` (0 when served in process only)
  // Blocks until a Finish call has been answered (OK), the learner failed or Stop (the error).
  absl::Status Wait();
  // Ends the stage early (the step loop failed): the other ranks stop with `why`; calls are refused.
  void Stop(const absl::Status& why);

 private:
  LearnerHost() = default;
  std::unique_ptr<LearnerServer> service_;
  std::unique_ptr<RpcServer> server_;
  std::thread keep_alive_;     // runs the service's Wait: keep-alives to the other ranks until the end
  absl::Status wait_status_;   // its result, read after the join
};

// The other ranks: follow rank 0's commands until Finish (OK) or until rank 0 stops or fails (an error).
absl::Status FollowLearner(comm::Group& group, LearnerHooks hooks);

// `rlhf serve learner`: serves the stage on `address` (rank 0) or follows (other ranks) until Finish.
absl::Status ServeLearner(comm::Group& group, const RpcConfig& rpc, const std::string& address, LearnerHooks hooks);

}  // namespace rlhf::trainer

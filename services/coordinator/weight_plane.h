// How the coordinator brings the rollout workers to the learner's weights.
//
//   grpc        the learner's weights are relayed as chunks, through this process, into each worker's
//               UpdateWeights stream, one worker after another (the embedded default: all in one process)
//   collective  the coordinator hosts the rendezvous store and only sends control over gRPC: the learner
//               (rank 0) and every worker join a weight group (common/comm/weight_sync.h), then the learner
//               broadcasts each version, bucketed in the workers' dtype and checksummed, and every worker
//               acknowledges. The coordinator never holds a copy of the model.
//   auto        collective when the rollout workers are other processes, grpc when they are embedded
//
// A failed collective sync leaves the group out of step: the next sync forms a new generation of it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/comm/group.h"
#include "common/config/config.h"
#include "common/rpc.h"
#include "common/status.h"
#include "rlhf/rollout.grpc.pb.h"
#include "services/coordinator/learner_client.h"

namespace rlhf::coordinator {

struct WeightsConfig {
  std::string transport = "auto";    // auto | grpc | collective (see the file comment)
  int64_t bucket_bytes = 64 << 20;   // collective: tensors flattened into buckets of at most this many bytes
  bool checksum = true;              // collective: a checksum per bucket, verified before the swap
  double timeout_seconds = 120;      // collective: the group's formation and each sync end within this
  std::string store_host;            // collective: the store's address as the others reach it; "" = loopback
                                     // when every role is on loopback, else this host's name
  int64_t store_port = 0;            // collective: the store's port; 0 = a free one
  std::string backend = "auto";      // collective: auto (nccl with CUDA builds, else gloo) | gloo | nccl
  static const config::Section<WeightsConfig>& Spec();  // under "weights"
};

// The collective transport: hosts the store, forms the group, runs each sync. One sync at a time.
class CollectiveWeights {
 public:
  // `advertise` is the store host the others connect to (loopback when empty).
  static absl::StatusOr<std::unique_ptr<CollectiveWeights>> Start(const WeightsConfig& config, const std::string& advertise,
                                                                  LearnerClient& learner,
                                                                  std::vector<std::shared_ptr<grpc::Channel>> workers,
                                                                  RpcConfig rpc, RetryPolicy retry);
  // The workers `members` (indices of the channels given at Start) take `version` from the learner (the
  // learner must be at it). Forms a new generation of the group first when there is none or its members
  // differ; a worker that does not answer Health (with the retries) fails the
  // formation at once rather than after the group's timeout. On failure the errors of every member that failed, in one status.
  absl::Status Sync(int64_t version, const std::vector<size_t>& members);

  int64_t generation() const { return generation_; }
  int store_port() const { return store_->port(); }
  // Every member of the formed generation leaves it (best effort, a short deadline each).
  ~CollectiveWeights();

 private:
  CollectiveWeights(const WeightsConfig& config, LearnerClient& learner, RpcConfig rpc, RetryPolicy retry)
      : config_(config), learner_(learner), rpc_(rpc), retry_(retry) {}
  absl::Status Form(const std::vector<size_t>& members);
  // gRPC deadline of a call that runs a collective: the group's timeout and a margin, so that the
  // collective's own error (naming its cause) comes back first.
  // Each call of a formation or sync ends by weights.timeout_seconds (half a second more, so that a
  // collective's own timeout is what a member reports): a hung member cannot hold a sync longer.
  double CallDeadline() const { return config_.timeout_seconds + 0.5; }

  WeightsConfig config_;
  LearnerClient& learner_;
  RpcConfig rpc_;
  RetryPolicy retry_;
  std::shared_ptr<comm::Store> store_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<Rollout::Stub>> workers_;
  int64_t generation_ = 0;
  bool formed_ = false;
  std::vector<size_t> members_;  // of the formed generation: rank i + 1 is worker members_[i]
};

// The store host to advertise: config.store_host, else loopback when every address given is loopback (or
// there are none), else this host's name.
std::string AdvertisedStoreHost(const WeightsConfig& config, const std::vector<std::string>& addresses);

}  // namespace rlhf::coordinator

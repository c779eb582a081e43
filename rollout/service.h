// The rollout worker's gRPC service (rlhf.Rollout): streaming Generate and chunked UpdateWeights.
//
// Generate validates every request (ids within the vocabulary, lengths within the context, sampling
// parameters in range) and answers INVALID_ARGUMENT with a message, never crashes. It generates in groups of
// prompts and streams each sample as it finishes, stamped with the policy version that produced it.
// UpdateWeights assembles a client stream of chunks into a staging copy; when a chunk with commit = true
// arrives and every tensor is whole and matches the model, the update is queued, and it is swapped into the
// model between two generation groups (never during one: no torn model); the version moves with the swap.
//
// Thread-safety: all methods may be called concurrently; generation groups and swaps are serialised.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/config/config.h"
#include "common/model/transformer.h"
#include "common/text/tokenizer.h"
#include "common/rpc.h"
#include "rlhf/rollout.grpc.pb.h"
#include "common/comm/weight_sync.h"
#include "rollout/generator.h"

namespace rlhf::text {
class Tokenizer;
}

namespace rlhf::rollout {

struct RolloutServiceOptions {
  GeneratorOptions generator;       // slots and cache capacity
  int64_t max_prompts = 1024;       // per request
  int64_t max_n = 64;               // samples per prompt
  int64_t max_new_tokens = 4096;    // upper bound a request may ask for
  bool swap_between_tokens = false;  // new weights go in between decode steps, not only between groups
};

class RolloutService final : public Rollout::Service {
 public:
  // `model` and `tokenizer` must outlive the service; tokenizer may be null (then prompts must be ids).
  RolloutService(model::TransformerImpl* model, const text::Tokenizer* tokenizer, std::vector<int32_t> eos_ids,
                 RolloutServiceOptions options, int64_t initial_version = 0);

  grpc::Status Generate(grpc::ServerContext* context, const GenerateRequest* request,
                        grpc::ServerWriter<GenerateResponse>* writer) override;
  grpc::Status UpdateWeights(grpc::ServerContext* context, grpc::ServerReader<WeightChunk>* reader,
                             UpdateWeightsReply* reply) override;
  // Weights over a collective (common/comm/weight_sync.h). Within one group versions never go back (an
  // older one is refused: ABORTED); a new group may start anywhere (a new run). A failed sync leaves the
  // group (the coordinator forms the next generation) and swaps nothing in.
  grpc::Status JoinWeightGroup(grpc::ServerContext* context, const WeightGroupSpec* spec,
                               WeightGroupReply* reply) override;
  grpc::Status ReceiveWeights(grpc::ServerContext* context, const WeightSyncRequest* request,
                              UpdateWeightsReply* reply) override;
  grpc::Status LeaveWeightGroup(grpc::ServerContext* context, const WeightSyncRequest* request,
                                UpdateWeightsReply* reply) override;
  ~RolloutService() override;
  // Test seam: the weight group's per-bucket hook (see comm::WeightGroup::SetBucketHookForTesting), set on
  // every group this worker joins.
  void SetWeightBucketHookForTesting(std::function<void(int64_t, torch::Tensor&)> hook) {
    std::lock_guard<std::mutex> lock(weight_mu_);
    bucket_hook_ = std::move(hook);
  }

  // The version of the weights in use now, and the one the next generation group will use (a committed
  // update waits for the running group to end). Health reports next_version(): a worker that has accepted a
  // push is not pushed again.
  int64_t version() const;
  int64_t next_version() const;

  // Stages the weights of a checkpoint folder (same architecture and shapes as the served model) as
  // `version`; they are swapped in like a streamed update. INVALID_ARGUMENT when the folder does not fit.
  absl::Status StageFromFolder(const std::string& dir, int64_t version);

  // Test seam: called on the generating thread after each sample is written to a Generate stream, while
  // its generation group holds the model (an update committed from inside the hook is swapped in at the
  // next group boundary). Lets a test place an event at an exact point of a stream instead of racing it.
  // Set it before any stream runs; null removes it.
  using StreamHook = std::function<void(const rlhf::Sample&)>;
  void SetStreamHookForTesting(StreamHook hook) { stream_hook_ = std::move(hook); }

 private:
  struct Staged {
    int64_t version = 0;
    std::map<std::string, torch::Tensor> tensors;  // whole tensors, in the model's dtype
  };
  // Validates a request and turns its prompts into token ids (text is tokenized once, here).
  absl::StatusOr<std::vector<PromptInput>> Prepare(const GenerateRequest& request) const;
  // Queues a complete staged update and applies it at once when no generation group is running.
  void Commit(std::unique_ptr<Staged> staged);
  // Applies a committed update if one is waiting.
  void SwapIfPending() ABSL_EXCLUSIVE_LOCKS_REQUIRED(model_mu_);

  model::TransformerImpl* model_;
  const text::Tokenizer* tokenizer_;
  std::vector<int32_t> eos_;
  RolloutServiceOptions options_;
  std::map<std::string, torch::Tensor> params_;  // name -> live parameter

  mutable std::mutex model_mu_;  // generation groups and swaps: the model's weights are read or written under it
  std::unique_ptr<Generator> generator_ ABSL_GUARDED_BY(model_mu_);
  int64_t version_ ABSL_GUARDED_BY(model_mu_) = 0;

  mutable std::mutex staged_mu_;
  std::unique_ptr<Staged> pending_ ABSL_GUARDED_BY(staged_mu_);  // committed, waiting for the next group boundary
  StreamHook stream_hook_;           // tests only

  std::mutex weight_mu_;  // one weight-group call at a time
  std::unique_ptr<comm::WeightGroup> weight_group_ ABSL_GUARDED_BY(weight_mu_);
  int64_t weight_floor_ ABSL_GUARDED_BY(weight_mu_) = 0;  // the newest version taken in this group: none older
  std::string store_host_ ABSL_GUARDED_BY(weight_mu_);     // the group's rendezvous store
  int store_port_ ABSL_GUARDED_BY(weight_mu_) = 0;
  // Leaves a group whose rendezvous store is gone (its coordinator died without a LeaveWeightGroup): such a
  // group's transport would keep polling dead peers. Checks every few seconds while no sync runs.
  void WatchStore();
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool stopping_ = false;  // under watch_mu_
  std::thread watcher_;
  std::function<void(int64_t, torch::Tensor&)> bucket_hook_ ABSL_GUARDED_BY(weight_mu_);  // tests only
};

// The keys of a rollout worker (`rlhf serve rollout`, and the embedded worker of `rlhf train`).
struct RolloutServerConfig {
  std::string model;                      // model folder to serve (serve rollout; train serves its policy)
  std::string address = "127.0.0.1:50051";  // host:port to listen on (serve rollout; loopback unless told)
  int64_t slots = 16;                     // sequences decoded together
  int64_t capacity = 1024;                // KV cache length per sequence (prompt + completion)
  int64_t max_new_tokens = 1024;          // the most a request may ask for
  std::string dtype;                      // "" = the checkpoint's, float32, bfloat16
  bool swap_between_tokens = false;       // take new weights between decode steps (per-token versions)
  static const config::Section<RolloutServerConfig>& Spec();  // under "rollout"
};

// A rollout service together with the model and tokenizer it serves.
struct ServedRollout {
  model::Transformer model{nullptr};
  std::unique_ptr<text::Tokenizer> tokenizer;  // null when the folder has none (prompts must be ids)
  std::unique_ptr<RolloutService> service;
};
// Loads `model_dir` (in config.dtype) and builds the service over it with the config's limits.
absl::StatusOr<std::unique_ptr<ServedRollout>> LoadRolloutService(const RolloutServerConfig& config,
                                                                  const std::string& model_dir,
                                                                  int64_t initial_version = 0);

}  // namespace rlhf::rollout

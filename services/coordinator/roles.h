// The rollout workers and the scorer an online run (or `rlhf eval`) talks to, and the prompts it sends.
//
// With no addresses configured the roles are embedded: a rollout service over its own copy of the policy
// and a scorer service (from the reward.* keys) run in this process behind in-process gRPC channels, so
// the single-process default exercises the same RPCs, weight pushes and retries as separate processes.
// With addresses, the channels go to `rlhf serve rollout` / `rlhf serve scorer` processes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/data/dataset.h"
#include "common/rpc.h"
#include "common/text/model_text.h"
#include "rlhf/rollout.pb.h"
#include "services/coordinator/clients.h"

namespace rlhf::rollout {
struct ServedRollout;
}
namespace rlhf::scoring {
class ScorerService;
struct RewardConfig;
}

namespace rlhf::coordinator {

struct RolesConfig {
  std::vector<std::string> rollout_addresses;  // host:port of rollout workers; empty = one embedded worker
  std::string scorer_address;                  // host:port of the scorer; "" = embedded (reward.* keys)
  std::vector<std::string> scorer_addresses;   // more scorer replicas (with scorer_address: all of them)
  std::string learner_address;                 // host:port of `rlhf serve learner`; "" = this process learns
  int64_t max_attempts = 3;                    // tries of a call before its prompts fail
  double backoff_seconds = 0.2;                // wait before the second try, doubled after
  int64_t weight_chunk_bytes = 4 << 20;        // weight update chunk size
  int64_t lease_prompts = 0;                   // prompts per rollout lease; 0 = two leases per worker per call
  double lease_seconds = 0;                    // deadline of a lease; 0 = adaptive (LeasePolicy)
  static const config::Section<RolesConfig>& Spec();  // under "roles"
  RetryPolicy retry() const { return {max_attempts, backoff_seconds}; }
  LeasePolicy leases() const { return {lease_prompts, lease_seconds}; }
  // scorer_address and scorer_addresses together, in that order; empty = an embedded scorer.
  std::vector<std::string> scorers() const;
};

class Roles {
 public:
  // Connects to (or starts) the roles. `policy_dir` is the model an embedded rollout worker starts from,
  // at `initial_version`; `config` supplies the rollout.*, reward.*, scorer.* and rpc.* keys.
  // `reward` replaces the reward.* keys of `config` for an embedded scorer when given (a pipeline fills in
  // the reward model it trained).
  static absl::StatusOr<std::unique_ptr<Roles>> Start(const RolesConfig& roles, const config::Config& config,
                                                      const std::string& policy_dir, int64_t initial_version,
                                                      const scoring::RewardConfig* reward = nullptr);
  ~Roles();

  std::vector<std::shared_ptr<grpc::Channel>> rollout_channels() const { return rollout_; }
  std::vector<std::shared_ptr<grpc::Channel>> scorer_channels() const { return scorer_; }
  bool embedded_rollout() const { return embedded_rollout_ != nullptr; }
  bool embedded_scorer() const { return embedded_scorer_ != nullptr; }
  const RpcConfig& rpc() const { return rpc_; }

 private:
  Roles() = default;
  RpcConfig rpc_;
  std::unique_ptr<rollout::ServedRollout> embedded_rollout_;
  std::unique_ptr<scoring::ScorerService> embedded_scorer_;
  std::unique_ptr<RpcServer> rollout_server_, scorer_server_;
  std::vector<std::shared_ptr<grpc::Channel>> rollout_;
  std::vector<std::shared_ptr<grpc::Channel>> scorer_;
};

// Registers the keys Roles::Start reads (roles.*, rollout.*, reward.*, scorer.*, rpc.*).
void RegisterRoleKeys(config::Schema& schema);

// The prompts of `indices` of a dataset as rollout prompts: prompt_index = position in `indices`, the id
// of the example, the text (message lists rendered with the chat template and the generation prompt), its
// token ids (text::ModelText::EncodePrompt: the workers take these rather than tokenizing the text again),
// and the answer (under `answer_field`) and every other field as pass-through JSON.
absl::StatusOr<std::vector<Prompt>> PromptsOf(const data::Dataset& data, const std::vector<size_t>& indices,
                                              const text::ModelText& text, const std::string& answer_field);

// Indices of a dataset's split by name: heldout | train | all.
std::vector<size_t> SplitIndices(const data::Dataset& data, const std::string& split);

// The prompts of one split of a prompt/answer JSONL, rendered with the chat template of `model_dir` where
// the prompts are message lists (what `rlhf eval` and the pipeline's evaluations send).
absl::StatusOr<std::vector<Prompt>> LoadEvalPrompts(const data::DataConfig& data, const std::string& split,
                                                    const std::string& model_dir, const std::string& answer_field);

}  // namespace rlhf::coordinator

// The PPO-family update on a rollout batch of scored samples (docs/algorithms.md, "Batch vocabulary"): the
// offline RL stage of `rlhf train` and the online driver both call RlUpdate::Update once per policy step.
//
//   1. rows = prompt ++ completion; targets = the completion tokens (truncated ones masked by option)
//   2. old log-probs (current policy, no grad), values (critic), reference log-probs (given by the scorer
//      in the samples, else computed with the reference model), all at the sampling temperature
//   3. score = reward (+ missing-EOS penalty for truncated responses); advantages by the chosen estimator:
//        gae:    token rewards (score on the last token - beta * kl_t), GAE, whitened over the global batch
//        grpo | dr_grpo | rloo: group-relative sequence advantages on every token
//        reinforce_pp (_baseline): return-to-go of the token rewards, whitened over the global batch
//        process: the samples' step rewards (scorer), normalised over the group; A_t sums the steps ending
//                 at or after t
//   4. ppo_epochs passes; each splits the batch into minibatches (one Learner::Step each) of micro-batches
//   5. the adaptive KL coefficient (Ziegler et al.) moves toward its target
// Samples of one prompt (a group) must be consecutive and on one rank. Dimension key: N samples on this
// rank, T row length.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/model/transformer.h"
#include "rlhf/sample.pb.h"
#include "trainer/algo/kl.h"
#include "trainer/algo/masked.h"
#include "trainer/algo/ppo.h"
#include "trainer/learner.h"
#include "trainer/objectives.h"

namespace rlhf::trainer {

// The advantage estimator (rl.advantage). kAuto: gae with a critic, else grpo.
enum class Advantage { kAuto, kGae, kGrpo, kDrGrpo, kRloo, kReinforcePp, kReinforcePpBaseline, kProcess };
// Where the KL to the reference goes (rl.kl_placement). kAuto: the reward for gae / reinforce_pp, the loss
// for the group estimators.
enum class KlPlacement { kAuto, kReward, kLoss, kNone };
// The KL estimator (rl.kl_estimator). kAuto: k1 in the reward, k3 in the loss.
enum class KlEstimatorChoice { kAuto, kK1, kK2, kK3 };
const char* AdvantageName(Advantage a);

struct RlConfig {
  Advantage advantage = Advantage::kAuto;  // auto (gae with a critic, else grpo) | gae | grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline | process
  int64_t group_size = 1;               // G: samples per prompt in the batch
  int64_t ppo_epochs = 1;               // passes over the rollout batch
  int64_t minibatch_size = 0;           // samples per optimizer step over all ranks; 0 = the whole rollout batch
  int64_t micro_batch_size = 4;         // samples per forward/backward on one rank
  double gamma = 1.0;                   // GAE / return discount
  double lam = 0.95;                    // GAE lambda
  bool whiten_advantages = true;        // whiten GAE advantages over the global batch
  double kl_coef = 0.05;                // beta: initial (or fixed) KL coefficient
  KlPlacement kl_placement = KlPlacement::kAuto;  // auto (reward for gae / reinforce_pp, loss for group estimators) |
                                        // reward (PPO: r_t -= beta kl_t) | loss (GRPO: + beta agg(kl)) | none
  KlEstimatorChoice kl_estimator = KlEstimatorChoice::kAuto;  // auto (k1 in the reward, k3 in the loss) | k1 | k2 | k3
  bool kl_clamp = false;                // clamp log-ratio and KL as verl / OpenRLHF
  double kl_target = 0;                 // adaptive KL: target KL per sequence; 0 = fixed coefficient
  double kl_horizon = 10000;            // adaptive KL horizon (samples)
  double score_clip = 0;                // clip the sequence score to [-c, c]; 0 = off
  double missing_eos_penalty = 0;       // added to the score of responses cut at the length limit (e.g. -1)
  bool mask_truncated = false;          // truncated responses contribute no loss
  double group_eps = 1e-6;              // epsilon of the group std (grpo)
  double clip_eps_low = 0.2;
  double clip_eps_high = 0.2;
  double dual_clip = 0;                 // c > 1: dual clip for negative advantages; 0 = off
  algo::RatioLevel ratio_level = algo::RatioLevel::kToken;  // token | sequence (GSPO)
  double tis_cap = 0;                   // truncated importance sampling against behaviour log-probs; 0 = off
  double max_behaviour_gap = 1.0;       // refuse a group whose mean |learner - behaviour| log-prob per token exceeds this; 0 = off
  algo::Aggregation loss_aggregation = algo::Aggregation::kTokenMean;  // token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
  int64_t norm_length = 0;              // L_max of seq_mean_token_sum_norm; 0 = the longest response of the batch
  double vf_coef = 0.5;
  algo::ValueClip value_clip = algo::ValueClip::kPpo;  // none | ppo | study_notes
  double vclip = 0.2;
  double ent_coef = 0;
  bool shuffle_minibatches = true;      // shuffle the rows of this rank before cutting minibatches
  static void AddTo(config::Section<RlConfig>& s);
};

// The adaptive KL controller of Ziegler et al. (2019) as TRL implements it: with target > 0,
// beta *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon after each batch; else beta stays.
class KlController {
 public:
  KlController(double init, double target, double horizon) : value_(init), target_(target), horizon_(horizon) {}
  double value() const { return value_; }
  void Update(double kl, double n_samples);
  void Restore(double value) { value_ = value; }

 private:
  double value_, target_, horizon_;
};

// Checks a batch before any update uses it (no collective, no model): whole consecutive groups of
// `group_size`, every sample scored with a finite reward, a non-empty completion, one temperature, ids in
// [0, vocab), prompt + completion within `context`, log-probs (when given) finite, <= 0 and one per
// completion token. INVALID_ARGUMENT naming the first bad sample. The learner service calls it on the
// whole batch before its ranks start a step, so a bad request is refused without failing the learner.
absl::Status CheckSamples(const std::vector<Sample>& samples, int64_t group_size, int64_t vocab, int64_t context);

class RlUpdate {
 public:
  // policy (and critic, when not empty) are registered with `learner`; reference may be empty when every
  // sample carries ref_logprobs or no KL is used. pad_id pads rows.
  RlUpdate(Learner* learner, model::Transformer policy, model::Transformer critic, model::Transformer reference,
           RlConfig config, int32_t pad_id);

  // One policy step on this rank's samples (whole groups). `seed` orders the minibatches. Returns the
  // metrics of the step, reduced over ranks: rollout statistics plus the mean of each learner metric over
  // the optimizer steps. INVALID_ARGUMENT for samples without a reward, incomplete groups, or ids that do
  // not fit the model.
  absl::StatusOr<std::map<std::string, double>> Update(const std::vector<Sample>& samples, uint64_t seed);
  // CheckSamples with this update's group size and model.
  absl::Status Check(const std::vector<Sample>& samples) const;

  KlController& kl_controller() { return kl_; }
  const RlConfig& config() const { return config_; }
  Advantage advantage() const { return advantage_; }         // resolved: never kAuto
  KlPlacement kl_placement() const { return kl_placement_; }  // resolved: never kAuto

 private:
  Learner* learner_;
  model::Transformer policy_, critic_, reference_;
  RlConfig config_;
  // Resolved at construction (no kAuto left).
  Advantage advantage_;
  KlPlacement kl_placement_;
  algo::KlEstimator kl_estimator_;
  int32_t pad_id_;
  KlController kl_;
};

}  // namespace rlhf::trainer

// The config of `rlhf train`: one struct per stage family, one comment per field, read once at the start of
// a stage and never changed. Keys (with their documentation, generated into docs/config.md):
//   train.*                                 TrainConfig: the pipeline
//   sft.*                                   SftConfig
//   reward_model.*                          RewardModelConfig
//   dpo.* kto.* orpo.* simpo.* cpo.* rrhf.*  PreferenceConfig (each loss registers its own keys)
//   rl.*                                    RlStageConfig (the stage: data, sampling, steps) and RlConfig
//                                           (trainer/rl_update.h: the update)
//   online_dpo.* rft.*                      OnlinePrefConfig
//   <stage>.data.*, <stage>.optim.*         data::DataConfig, OptimConfig
#pragma once

#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/data/dataset.h"
#include "trainer/algo/preference.h"
#include "trainer/optim.h"
#include "trainer/rl_update.h"

namespace rlhf::trainer {

struct TrainConfig {
  std::vector<std::string> stages = {"sft"};  // the pipeline, in order (names: trainer/pipeline/stages.h)
  std::string model;                          // starting policy (HF folder with tokenizer files)
  int64_t save_every = 0;                     // checkpoint every N steps of a stage; 0 = at the end of each stage
  int64_t keep_checkpoints = 2;               // newest checkpoints kept; 0 = all
  bool resume = false;                        // continue the run directory from its newest good checkpoint
  int64_t log_every = 1;                      // print a progress line every N steps
  double memory_limit_gb = 0;                 // refuse a stage estimated to need more; 0 = the machine's memory
  static const config::Section<TrainConfig>& Spec();  // under "train"
};

// Keys every offline stage has, each stage under its own prefix.
struct OfflineConfig {
  std::string model;             // starting model; "" = the policy of the previous stage (or train.model)
  int64_t epochs = 1;            // passes over the training split
  int64_t max_steps = 0;         // stop after this many optimizer steps; 0 = epochs decide
  int64_t batch_size = 8;        // examples (pairs) per optimizer step over all ranks
  int64_t micro_batch_size = 4;  // rows (pairs) per forward/backward on one rank
  int64_t max_length = 512;      // tokens per example; longer ones are cut
  int64_t eval_every = 0;        // evaluate on the held-out split every N steps; 0 = at the end only
};

struct SftConfig : OfflineConfig {
  bool packing = false;  // pack several examples per row (attention kept inside each)
  // Train until the job is done: held-out greedy accuracy (the completion is the truth, compared as
  // reward.extract compares answers) measured every eval_every steps on this many held-out prompts (0 = not
  // measured); the stage ends at max_steps / epochs or earlier, when the accuracy reaches target_accuracy or
  // when neither it nor the held-out loss has improved for `patience` evaluations.
  int64_t accuracy_prompts = 0;
  double target_accuracy = 0;  // 0 = no target
  int64_t patience = 0;        // evaluations without a new best accuracy; 0 = off
  static const config::Section<SftConfig>& Spec();  // under "sft"
};

struct RewardModelConfig : OfflineConfig {
  double centering = 0;          // coefficient of mean((r_c + r_r)^2)
  std::string margin_field;      // per-pair margin field of the data; "" = no margin
  bool freeze_backbone = false;  // train the score head only
  static const config::Section<RewardModelConfig>& Spec();  // under "reward_model"
};

// The preference losses (dpo, kto, orpo, simpo, cpo, rrhf): each stage registers the keys its loss reads.
struct PreferenceConfig : OfflineConfig {
  algo::DpoLoss loss_type = algo::DpoLoss::kSigmoid;  // dpo: sigmoid | ipo | hinge | robust
  double beta = 0.1;                  // dpo, kto: KL strength; orpo: odds-ratio weight; simpo, cpo: margin scale
  double label_smoothing = 0;         // dpo, simpo, cpo: probability of a flipped label
  bool ipo_length_normalize = true;   // dpo ipo: per-token means (TRL) instead of sums (OpenRLHF)
  double gamma = 0.5;                 // simpo: target reward margin
  double alpha = 1.0;                 // cpo (default 1), dpo (default 0, RPO): weight of the NLL of chosen
  double desirable_weight = 1.0;      // kto: lambda_D
  double undesirable_weight = 1.0;    // kto: lambda_U
  double sft_weight = 1.0;            // rrhf: weight of the NLL of the best response
  std::string reference;              // dpo, kto: reference policy; "" = the starting model
  bool reference_cache = true;        // dpo, kto: keep the reference log-probs in the stage directory
  // The keys of preference stage `stage` (dpo | kto | orpo | simpo | cpo | rrhf).
  static config::Section<PreferenceConfig> Spec(const std::string& stage);
};

// The PPO-family stages (ppo, grpo) and the online preference stages share these; the update's own keys
// (rl.advantage, rl.kl_coef, ...) are RlConfig's.
struct RlStageConfig {
  std::string policy;            // starting policy; "" = the policy of the previous stage (or train.model)
  std::string critic;            // critic init (ppo); "" = the previous reward_model stage's output, else the policy
  std::string reference;         // reference policy for KL when samples carry no ref_logprobs; "" = the starting policy
  std::string samples;           // JSONL of scored samples (rewards filled in), groups of one prompt consecutive
  int64_t rollout_batch_size = 8;  // prompts per policy step (times group_size samples)
  int64_t steps = 0;             // policy steps; 0 = every full rollout batch of the file (epochs when online)
  // online (rl.data.path set): the coordinator generates and scores the samples of each step
  int64_t epochs = 1;            // passes over the training prompts
  double temperature = 1.0;      // sampling of the rollouts
  double top_p = 1.0;            // nucleus mass; 1 = off
  int64_t top_k = 0;             // keep the k most likely tokens; 0 = off
  double min_p = 0.0;            // keep tokens with p >= min_p * p_max; 0 = off
  int64_t max_new_tokens = 64;   // longest completion
  std::vector<std::string> stop; // stop strings besides the model's end-of-sequence ids
  bool dynamic_sampling = false;  // filter groups whose rewards are all equal (DAPO), recorded in the ledger
  bool scorer_reference = false;  // take reference log-probs from the scorer (reward.reference_model) instead of rl.reference
  int64_t max_staleness = 0;      // asynchronous RL: versions a trained sample may lag the learner; 0 = on-policy
  bool sample_log = false;        // write samples.jsonl: each trained sample's prompt, sample index and versions
  static const config::Section<RlStageConfig>& Spec();  // under "rl"
};

// Online DPO and rejection-sampling fine-tuning: the online loop of the rl.* keys with another update.
struct OnlinePrefConfig {
  double beta = 0.1;                  // online_dpo: strength of the implicit KL to the reference
  algo::DpoLoss loss_type = algo::DpoLoss::kSigmoid;  // online_dpo: sigmoid | ipo | hinge | robust
  double min_margin = 0.0;            // online_dpo: a pair is trained only when best - worst >= this (and > 0)
  double threshold = 1.0;             // rft: a prompt's best sample is kept when its reward is >= this
  static const config::Section<OnlinePrefConfig>& Dpo();  // under "online_dpo"
  static const config::Section<OnlinePrefConfig>& Rft();  // under "rft"
};

// The names of the DPO loss types (dpo.loss_type, online_dpo.loss_type).
const std::vector<std::pair<std::string, algo::DpoLoss>>& DpoLossNames();
// The update of the PPO-family stages, under "rl".
const config::Section<RlConfig>& RlSection();
// <prefix>.data.* and <prefix>.* optimizer keys.
config::Section<data::DataConfig> DataSection(const std::string& prefix);
config::Section<OptimConfig> OptimSection(const std::string& prefix);

}  // namespace rlhf::trainer

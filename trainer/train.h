// `rlhf train`: a pipeline of training stages in one config (e.g. sft -> reward_model -> ppo), each stage
// reading the previous stage's output checkpoint, on one rank or many (mpirun / env bootstrap), with
// checkpoints, exact resume and a metrics log.
//
// Stages:
//   sft           supervised fine-tuning on prompt/completion or messages data (completion-only loss, packing)
//   reward_model  Bradley-Terry reward model on preference data (optional margin, centring, frozen backbone)
//   dpo           DPO family on preference data, reference log-probs from the frozen starting policy
//   ppo           PPO update with a critic on rollout batches of scored samples (rl.samples)
//   grpo          the critic-free GRPO-family update on rollout batches of scored samples
// Run directory: config.yaml, log.txt, metrics.jsonl (one line per step), checkpoints/ (see
// train_checkpoint.h), and <index>-<stage>/ with each stage's output HF model folder(s).
#pragma once

#include <string>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::trainer {

// Declares every key `rlhf train` reads.
void RegisterTrainKeys(config::Schema& schema);

// Runs the configured pipeline. `seed`: the run seed (run.seed). With `serve_learner_address` (`rlhf serve
// learner`), online stages serve rlhf.Learner there for a coordinator (`rlhf train` with
// roles.learner_address) instead of coordinating themselves (trainer/online_learner.h).
absl::Status RunTraining(const config::Config& config, const std::string& run_dir, uint64_t seed,
                         const std::string& serve_learner_address = "");

}  // namespace rlhf::trainer

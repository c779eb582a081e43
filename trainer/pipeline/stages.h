// The stages of `rlhf train`, in one table: each stage's name, its family (which file runs it), what it
// makes, and the function that runs it. Everything that names stages (train.stages' documentation and
// check, the keys `rlhf train` registers, which stages a coordinator-only process may run) reads it here.
//
//   name          family       file            makes
//   sft           sft          sft.cc          policy   supervised fine-tuning (completion-only loss, packing)
//   reward_model  preference   preference.cc   reward   Bradley-Terry reward model on preference pairs
//   dpo kto orpo  preference   preference.cc   policy   the DPO family on preference data (kto: unpaired too)
//   simpo cpo rrhf
//   ppo grpo      rl           rl.cc           policy   the PPO-family update: online (rl.data.path: the step
//                                                       loop of services/coordinator) or on scored samples
//   online_dpo    online_pref  online_preference.cc  policy   online: DPO on each group's best and worst sample
//   rft           online_pref  online_preference.cc  policy   online: SFT on each group's best sample above a threshold
#pragma once

#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::trainer {

struct Pipeline;

enum class StageFamily { kSft, kRewardModel, kPreference, kRl, kOnlinePreference };

struct StageSpec {
  std::string name;
  StageFamily family;
  bool online_capable;    // may run the online step loop (a coordinator-only process runs only these)
  bool makes_policy;      // false: the stage trains a reward model (the policy stays)
  void (*register_keys)(const std::string& name, config::Schema& schema);  // its own keys (stage.*, data, optim)
  absl::Status (*run)(Pipeline& p, int64_t index, const std::string& name);
};

// Every stage, in the order the documentation lists them.
const std::vector<StageSpec>& Stages();
// The stage named `name`, or null.
const StageSpec* FindStage(const std::string& name);
std::vector<std::string> StageNames();

}  // namespace rlhf::trainer

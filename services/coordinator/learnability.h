// Whether an online stage can learn, said before and while it trains. GRPO-style updates learn only from
// groups whose samples got different rewards: a policy that never produces a rewarded answer (or always
// does) gives them nothing to reinforce, and the run would spend its steps on zero advantages in silence.
//
// Before the first step (not on a resume) the starting policy answers a sample of the training prompts
// group_size times each, as the rollouts would; one line gives pass@group_size and the share of groups with
// equal rewards. When pass@k is under rl.precheck_min_pass the line says the run cannot learn and what to do
// (more SFT, more samples per prompt, easier prompts), and rl.precheck_stop ends the stage there. During
// training, rl.equal_reward_steps steps in a row with at least rl.equal_reward_alarm of the groups all equal
// say the same.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/config/config.h"
#include "services/coordinator/clients.h"
#include "services/coordinator/eval.h"

namespace rlhf::coordinator {

struct LearnabilityConfig {
  int64_t precheck_prompts = 64;    // training prompts of the check before the first step; 0 = no check
  double precheck_min_pass = 0.05;  // pass@group_size under which the run cannot learn
  bool precheck_stop = false;       // end the stage (FAILED_PRECONDITION) instead of warning
  double equal_reward_alarm = 0.9;  // share of groups with all rewards equal that counts as a step without signal
  int64_t equal_reward_steps = 10;  // such steps in a row before the run says so; 0 = never
  static const config::Section<LearnabilityConfig>& Spec();  // under "rl"
};

// `count` prompts spread evenly over `prompts` (all of them when there are fewer).
std::vector<Prompt> SpreadSample(const std::vector<Prompt>& prompts, int64_t count);

// The check before the first step: `sample` answered `group_size` times each with `params` (the rollouts'
// sampling) and judged as `eval` judges answers. Logs its line; returns its figures (for summary.json), or
// FAILED_PRECONDITION with the line when the run cannot learn and config.precheck_stop is set.
absl::StatusOr<nlohmann::json> Precheck(RolloutPool& pool, ScorerClient& scorer, const std::vector<Prompt>& sample,
                                        const SamplingParams& params, int32_t group_size, const EvalConfig& eval,
                                        const LearnabilityConfig& config, int64_t version, uint64_t seed,
                                        const std::string& stage);

// Counts the steps in a row whose groups had equal rewards (at least config.equal_reward_alarm of them) and
// says so once per run of config.equal_reward_steps such steps.
class EqualRewardAlarm {
 public:
  EqualRewardAlarm(LearnabilityConfig config, std::string stage) : config_(config), stage_(std::move(stage)) {}
  // One step's groups: scored whole, and of them with all rewards equal. True when this step raised the alarm.
  bool Observe(int64_t step, int64_t groups, int64_t equal_groups, double mean_reward);

 private:
  LearnabilityConfig config_;
  std::string stage_;
  int64_t run_ = 0;  // steps in a row at or above the alarm share
};

}  // namespace rlhf::coordinator

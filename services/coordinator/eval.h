// Evaluation of a policy on held-out prompts through the rollout and scoring services: greedy accuracy
// (with a 95% Wilson interval), mean reward of the greedy answers, and pass@k from n sampled answers per
// prompt (the unbiased estimator of Chen et al., 2021). Used by `rlhf eval` and, every eval.every steps,
// by the online RL stage of `rlhf train`.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/config/config.h"
#include "common/data/dataset.h"
#include "services/coordinator/clients.h"

namespace rlhf::coordinator {

struct EvalConfig {
  std::string split = "heldout";   // heldout | train | all: which hash split of the data is evaluated
  int64_t max_prompts = 0;         // evaluate the first N prompts of the split (file order); 0 = all
  int64_t max_new_tokens = 64;     // longest answer
  double success_threshold = 1.0;  // a greedy answer counts as correct when its reward is >= this
  std::string success_part;        // judge correctness by this reward_parts source (e.g. exact_match); "" = the reward
  int64_t k = 0;                   // pass@k; 0 = off
  int64_t samples = 0;             // answers sampled per prompt for pass@k (n >= k); 0 = k
  double temperature = 1.0;        // sampling temperature of the pass@k answers
  double top_p = 1.0;              // nucleus mass of the pass@k answers
  int64_t every = 0;               // during training: evaluate every N policy steps (plus before and after); 0 = before and after only
  std::string judged_by;           // not a key: how answers are judged (scoring::DescribeJudge), shown with the figures
  static const config::Section<EvalConfig>& Spec();  // under "eval"
};

struct EvalResult {
  int64_t prompts = 0;
  int64_t correct = 0;              // greedy answers with reward >= success_threshold
  double accuracy = 0;              // correct / prompts
  double accuracy_low = 0, accuracy_high = 0;  // 95% Wilson interval of the accuracy
  double mean_reward = 0;           // of the greedy answers that were scored
  int64_t errors = 0;               // prompts whose greedy answer could not be generated or scored (counted wrong)
  int64_t k = 0;                    // 0 when pass@k is off
  double pass_at_k = 0;             // mean over prompts of the unbiased pass@k estimate
  double sampled_mean_reward = 0;   // of the sampled answers that were scored (pass@k on)
  double equal_reward_fraction = 0; // prompts whose sampled answers all got the same reward (pass@k on)
  std::string judged_by;            // EvalConfig::judged_by
  std::vector<Sample> generations;  // greedy answers, then the sampled ones, with rewards where scored
  nlohmann::json ToJson() const;    // every figure above except the generations
};

// The data keys of an evaluation set (a prompt/answer JSONL), under "eval.data".
config::Section<data::DataConfig> EvalDataSection();

// The unbiased estimate of P(at least one of k draws without replacement from n answers, c of them
// correct, is correct): 1 - C(n - c, k) / C(n, k).
double PassAtK(int64_t n, int64_t c, int64_t k);
// The 95% (z = 1.96) Wilson score interval of a proportion of `successes` in `n` trials.
std::pair<double, double> WilsonInterval(int64_t successes, int64_t n, double z = 1.96);

// Evaluates `prompts` with the workers' current weights (`version`, which they must hold). Errors when
// the config is inconsistent or a service stays unreachable; per-prompt failures count as wrong answers.
absl::StatusOr<EvalResult> Evaluate(RolloutPool& pool, ScorerClient& scorer, const std::vector<Prompt>& prompts,
                                    const EvalConfig& config, int64_t version, uint64_t seed);

// Evaluate, with the generations written to `path` (JSONL, written whole) and one log line naming `what`
// was evaluated ("" = "policy version <version>"); returns the figures as EvalResult::ToJson.
absl::StatusOr<nlohmann::json> EvaluateToFile(RolloutPool& pool, ScorerClient& scorer, const std::vector<Prompt>& prompts,
                                              const EvalConfig& config, int64_t version, uint64_t seed,
                                              const std::string& path, const std::string& what = "");

}  // namespace rlhf::coordinator

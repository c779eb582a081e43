#include "services/coordinator/learnability.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace rlhf::coordinator {

const config::Section<LearnabilityConfig>& LearnabilityConfig::Spec() {
  static const auto* s = [] {
    using L = LearnabilityConfig;
    auto* s = new config::Section<L>("rl");
    s->Add("precheck_prompts", &L::precheck_prompts,
           "before the first step, answer this many training prompts group_size times each and report pass@group_size "
           "and the share of groups with equal rewards; 0 = no check",
           config::AtLeast(0));
    s->Add("precheck_min_pass", &L::precheck_min_pass,
           "pass@group_size of the check under which the run is said to be unable to learn", config::InRange(0, 1));
    s->Add("precheck_stop", &L::precheck_stop, "end the stage when the check says the run cannot learn (else a warning)");
    s->Add("equal_reward_alarm", &L::equal_reward_alarm,
           "share of a step's groups with all rewards equal at which the step counts as giving no signal",
           config::InRange(0, 1));
    s->Add("equal_reward_steps", &L::equal_reward_steps,
           "say so after this many such steps in a row (and again after as many more); 0 = never", config::AtLeast(0));
    return s;
  }();
  return *s;
}

std::vector<Prompt> SpreadSample(const std::vector<Prompt>& prompts, int64_t count) {
  const size_t n = prompts.size(), k = static_cast<size_t>(std::max<int64_t>(count, 0));
  if (k >= n) return prompts;
  std::vector<Prompt> out;
  out.reserve(k);
  for (size_t i = 0; i < k; ++i) out.push_back(prompts[i * n / k]);
  return out;
}

namespace {
std::string Advice() {
  return "train the SFT stage longer (sft.max_steps, or sft.target_accuracy / sft.patience), sample more answers per "
         "prompt (rl.group_size, rl.temperature), or start from easier prompts";
}
}  // namespace

absl::StatusOr<nlohmann::json> Precheck(RolloutPool& pool, ScorerClient& scorer, const std::vector<Prompt>& sample,
                                        const SamplingParams& params, int32_t group_size, const EvalConfig& eval,
                                        const LearnabilityConfig& config, int64_t version, uint64_t seed,
                                        const std::string& stage) {
  EvalConfig c = eval;
  c.max_prompts = 0;
  c.k = group_size;
  c.samples = group_size;
  c.temperature = params.temperature();
  c.top_p = params.top_p();
  c.max_new_tokens = params.max_new_tokens();
  ASSIGN_OR_RETURN(auto r, Evaluate(pool, scorer, sample, c, version, seed));
  nlohmann::json j = {{"prompts", r.prompts},
                      {"group_size", group_size},
                      {"pass_at_k", r.pass_at_k},
                      {"equal_reward_fraction", r.equal_reward_fraction},
                      {"sampled_mean_reward", r.sampled_mean_reward},
                      {"greedy_accuracy", r.accuracy}};
  const std::string figures = absl::StrFormat(
      "pass@%d %.1f%% on %d training prompts, %.0f%% of groups with all rewards equal, mean reward %.3f, greedy "
      "accuracy %.1f%%", group_size, 100 * r.pass_at_k, r.prompts, 100 * r.equal_reward_fraction,
      r.sampled_mean_reward, 100 * r.accuracy);
  if (r.pass_at_k < config.precheck_min_pass) {
    const std::string line = absl::StrCat(
        stage, " CANNOT LEARN from this policy: ", figures, " (rl.precheck_min_pass ",
        absl::StrFormat("%.1f%%", 100 * config.precheck_min_pass),
        "): almost no group holds a rewarded answer, so the update has nothing to reinforce. ", Advice(), ".");
    j["verdict"] = "cannot learn";
    if (config.precheck_stop) return absl::FailedPreconditionError(line + " (rl.precheck_stop)");
    spdlog::warn("{}", line);
  } else if (r.equal_reward_fraction >= config.equal_reward_alarm) {
    spdlog::warn("{}: little to learn from this policy: {}: groups with equal rewards give the update no signal. {}.",
                 stage, figures, r.sampled_mean_reward > 0.5 ? "Most prompts are solved by every sample: use harder prompts"
                                                             : Advice());
    j["verdict"] = "little signal";
  } else {
    spdlog::info("{}: before the first step: {}", stage, figures);
    j["verdict"] = "can learn";
  }
  return j;
}

bool EqualRewardAlarm::Observe(int64_t step, int64_t groups, int64_t equal_groups, double mean_reward) {
  if (config_.equal_reward_steps <= 0 || groups <= 0) return false;
  const double share = static_cast<double>(equal_groups) / static_cast<double>(groups);
  if (share < config_.equal_reward_alarm) {
    run_ = 0;
    return false;
  }
  if (++run_ % config_.equal_reward_steps != 0) return false;
  spdlog::warn("{}: NOT LEARNING: {} steps in a row (to step {}) with at least {:.0f}% of the groups' rewards all equal "
               "({:.0f}% at this step, mean reward {:.3f}): those groups give the update no signal. {}.",
               stage_, run_, step, 100 * config_.equal_reward_alarm, 100 * share, mean_reward,
               mean_reward > 0.5 ? "Most prompts are solved by every sample: use harder prompts" : Advice());
  return true;
}

}  // namespace rlhf::coordinator

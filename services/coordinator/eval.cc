#include "services/coordinator/eval.h"

#include <cmath>
#include <optional>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file.h"
#include "common/sample_json.h"

namespace rlhf::coordinator {

const config::Section<EvalConfig>& EvalConfig::Spec() {
  static const auto* s = [] {
    using E = EvalConfig;
    auto* s = new config::Section<E>("eval");
    s->Add("split", &E::split, "hash split of the data evaluated: heldout | train | all",
           config::OneOf({"heldout", "train", "all"}));
    s->Add("max_prompts", &E::max_prompts, "evaluate the first N prompts of the split; 0 = all", config::AtLeast(0));
    s->Add("max_new_tokens", &E::max_new_tokens, "longest answer, tokens", config::AtLeast(1));
    s->Add("success_threshold", &E::success_threshold, "a greedy answer is correct when its reward is >= this");
    s->Add("success_part", &E::success_part,
           "judge correctness by this reward source (e.g. exact_match, see reward.monitor); \"\" = the total reward");
    s->Add("k", &E::k, "pass@k from sampled answers; 0 = off", config::AtLeast(0));
    s->Add("samples", &E::samples, "answers sampled per prompt for pass@k (>= k); 0 = k", config::AtLeast(0));
    s->Add("temperature", &E::temperature, "sampling temperature of the pass@k answers", config::AtLeast(0));
    s->Add("top_p", &E::top_p, "nucleus mass of the pass@k answers; 1 = off", config::InRange(0, 1));
    s->Add("every", &E::every,
           "during training: evaluate every N policy steps, besides before the first and after the last; 0 = only those",
           config::AtLeast(0));
    return s;
  }();
  return *s;
}

config::Section<data::DataConfig> EvalDataSection() {
  config::Section<data::DataConfig> s("eval.data");
  data::DataConfig::AddTo(s);
  return s;
}

nlohmann::json EvalResult::ToJson() const {
  nlohmann::json j = {{"prompts", prompts},
                      {"correct", correct},
                      {"accuracy", accuracy},
                      {"accuracy_ci95", {accuracy_low, accuracy_high}},
                      {"mean_reward", mean_reward},
                      {"errors", errors}};
  if (!judged_by.empty()) j["judged_by"] = judged_by;
  if (k > 0) {
    j["k"] = k;
    j["pass_at_k"] = pass_at_k;
    j["sampled_mean_reward"] = sampled_mean_reward;
    j["equal_reward_fraction"] = equal_reward_fraction;
  } else {
    j["pass_at_k"] = nullptr;
  }
  return j;
}

double PassAtK(int64_t n, int64_t c, int64_t k) {
  if (n - c < k) return 1.0;
  // 1 - prod_{i = n - c + 1}^{n} (1 - k / i), the numerically stable form of 1 - C(n-c, k) / C(n, k).
  double q = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i) q *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  return 1.0 - q;
}

std::pair<double, double> WilsonInterval(int64_t successes, int64_t n, double z) {
  if (n <= 0) return {0.0, 1.0};
  const double nn = static_cast<double>(n), p = static_cast<double>(successes) / nn, z2 = z * z;
  const double centre = (p + z2 / (2 * nn)) / (1 + z2 / nn);
  const double half = z * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / (1 + z2 / nn);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

namespace {
// Generates and scores n answers per prompt; per prompt: the samples and whether each one was scored.
struct Answers {
  std::vector<std::vector<Sample>> samples;
  std::vector<std::vector<bool>> scored;
  std::vector<bool> failed;  // the prompt got no samples
};
absl::StatusOr<Answers> Answer(RolloutPool& pool, ScorerClient& scorer, const std::vector<Prompt>& prompts,
                               const SamplingParams& params, int32_t n, int64_t version) {
  auto gen = pool.Generate(prompts, params, n, version);
  Answers a;
  a.samples.resize(prompts.size());
  a.scored.resize(prompts.size());
  a.failed.assign(prompts.size(), false);
  std::vector<Sample> flat;
  std::vector<size_t> owner;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!gen.errors[i].ok()) {
      if (Retryable(gen.errors[i].code())) return absl::UnavailableError(absl::StrCat("eval: ", gen.errors[i].message()));
      a.failed[i] = true;
      continue;
    }
    for (auto& s : gen.groups[i]) {
      flat.push_back(std::move(s));
      owner.push_back(i);
    }
  }
  auto sc = scorer.Score(std::move(flat), false);
  for (size_t j = 0; j < sc.samples.size(); ++j) {
    if (!sc.errors[j].ok() && Retryable(sc.errors[j].code())) {
      return absl::UnavailableError(absl::StrCat("eval: scorer: ", sc.errors[j].message()));
    }
    a.scored[owner[j]].push_back(sc.errors[j].ok());
    a.samples[owner[j]].push_back(std::move(sc.samples[j]));
  }
  return a;
}
}  // namespace

absl::StatusOr<EvalResult> Evaluate(RolloutPool& pool, ScorerClient& scorer, const std::vector<Prompt>& all,
                                    const EvalConfig& config, int64_t version, uint64_t seed) {
  if (config.k > 0 && config.samples > 0 && config.samples < config.k) {
    return absl::InvalidArgumentError("eval.samples must be at least eval.k");
  }
  std::vector<Prompt> prompts = all;
  if (config.max_prompts > 0 && static_cast<int64_t>(prompts.size()) > config.max_prompts) {
    prompts.resize(static_cast<size_t>(config.max_prompts));
  }
  if (prompts.empty()) return absl::InvalidArgumentError("eval: no prompts to evaluate");
  EvalResult r;
  r.prompts = static_cast<int64_t>(prompts.size());
  r.judged_by = config.judged_by;
  SamplingParams greedy;
  greedy.set_temperature(0);
  greedy.set_top_p(1);
  greedy.set_max_new_tokens(static_cast<int32_t>(config.max_new_tokens));
  greedy.set_seed(seed);
  ASSIGN_OR_RETURN(auto g, Answer(pool, scorer, prompts, greedy, 1, version));
  // The figure a sample is judged by: its reward, or one source of it.
  absl::Status part_missing;
  auto judged = [&](const Sample& s) -> double {
    if (config.success_part.empty()) return s.reward();
    auto it = s.reward_parts().find(config.success_part);
    if (it == s.reward_parts().end()) {
      part_missing = absl::InvalidArgumentError(absl::StrCat("eval.success_part: the scorer gives no '", config.success_part,
                                                             "' (add it to reward.monitor or give it a weight)"));
      return 0.0;
    }
    return it->second;
  };
  double reward_sum = 0;
  int64_t rewarded = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const bool ok = !g.failed[i] && !g.scored[i].empty() && g.scored[i][0];
    if (!ok) {
      ++r.errors;
    } else {
      const double rew = g.samples[i][0].reward();
      reward_sum += rew;
      ++rewarded;
      if (judged(g.samples[i][0]) >= config.success_threshold) ++r.correct;
    }
    for (auto& s : g.samples[i]) r.generations.push_back(std::move(s));
  }
  r.accuracy = static_cast<double>(r.correct) / static_cast<double>(r.prompts);
  std::tie(r.accuracy_low, r.accuracy_high) = WilsonInterval(r.correct, r.prompts);
  r.mean_reward = rewarded > 0 ? reward_sum / static_cast<double>(rewarded) : 0.0;
  if (config.k > 0) {
    const int64_t n = config.samples > 0 ? config.samples : config.k;
    SamplingParams sampled = greedy;
    sampled.set_temperature(static_cast<float>(config.temperature));
    sampled.set_top_p(static_cast<float>(config.top_p));
    ASSIGN_OR_RETURN(auto s, Answer(pool, scorer, prompts, sampled, static_cast<int32_t>(n), version));
    double sum = 0, sampled_sum = 0;
    int64_t scored = 0, equal = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      int64_t c = 0;
      bool same = true;
      std::optional<float> first;
      for (size_t j = 0; j < s.samples[i].size(); ++j) {
        if (!s.scored[i][j]) continue;
        if (judged(s.samples[i][j]) >= config.success_threshold) ++c;
        const float rew = s.samples[i][j].reward();
        sampled_sum += rew, ++scored;
        same = same && (!first || *first == rew);
        if (!first) first = rew;
      }
      equal += same ? 1 : 0;  // a prompt without scored samples gives the update nothing either
      sum += PassAtK(n, c, config.k);  // a prompt without samples has c = 0
      for (auto& x : s.samples[i]) r.generations.push_back(std::move(x));
    }
    r.k = config.k;
    r.pass_at_k = sum / static_cast<double>(prompts.size());
    r.sampled_mean_reward = scored > 0 ? sampled_sum / static_cast<double>(scored) : 0.0;
    r.equal_reward_fraction = static_cast<double>(equal) / static_cast<double>(prompts.size());
  }
  RETURN_IF_ERROR(part_missing);
  return r;
}

absl::StatusOr<nlohmann::json> EvaluateToFile(RolloutPool& pool, ScorerClient& scorer, const std::vector<Prompt>& prompts,
                                              const EvalConfig& config, int64_t version, uint64_t seed,
                                              const std::string& path, const std::string& what) {
  ASSIGN_OR_RETURN(auto r, Evaluate(pool, scorer, prompts, config, version, seed));
  RETURN_IF_ERROR(WriteFileAtomic(path, [&](FileSink& out) -> absl::Status {
    for (const auto& s : r.generations) RETURN_IF_ERROR(out.Write(SampleToJson(s) + "\n"));
    return absl::OkStatus();
  }));
  spdlog::info("eval of {}: accuracy {}/{} = {:.1f}% (95% CI {:.1f}-{:.1f}), mean reward {:.4f}{}{}",
               what.empty() ? absl::StrCat("policy version ", version) : what,
               r.correct, r.prompts, 100 * r.accuracy, 100 * r.accuracy_low, 100 * r.accuracy_high, r.mean_reward,
               r.k > 0 ? absl::StrFormat(", pass@%d %.1f%%", r.k, 100 * r.pass_at_k) : std::string(),
               r.judged_by.empty() ? std::string() : absl::StrCat("; correct: ", r.judged_by));
  return r.ToJson();
}

}  // namespace rlhf::coordinator

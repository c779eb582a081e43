#include "services/scoring/sources.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/metrics.h"
#include "services/scoring/scorer.h"

namespace rlhf::scoring {

void ScoreBatch::Fail(size_t i, const std::string& source, const absl::Status& why) {
  if (!errors_[i].ok()) return;
  errors_[i] = absl::Status(why.code(), absl::StrCat(source, ": ", why.message()));
  Metrics::Process()
      .Counter("rlhf_reward_failures_total", "samples a reward source could not score", {{"source", source}})
      .Increment();
}

const std::vector<SourceSpec>& Sources() {
  using R = RewardConfig;
  static const std::vector<SourceSpec> sources = {
      {"exact_match", &R::exact_match_weight, true, false, MakeExactMatchSource},
      {"format", &R::format_weight, true, false, MakeFormatSource},
      {"length", &R::length_weight, true, false, MakeLengthSource},
      {"missing_eos", &R::missing_eos_weight, true, false, MakeMissingEosSource},
      {"code", &R::code_weight, false, false, MakeCodeSource},
      {"reward_model", &R::reward_model_weight, false, true, MakeRewardModelSource},
      {"judge", &R::judge_weight, false, true, MakeJudgeSource},
      {"process", &R::process_weight, false, true, MakeProcessSource},
  };
  return sources;
}

std::string ExtraText(const std::string& json_text) {
  auto j = nlohmann::json::parse(json_text, nullptr, false);
  return (!j.is_discarded() && j.is_string()) ? j.get<std::string>() : json_text;
}

std::string DescribeJudge(const RewardConfig& config, const std::string& success_part, double threshold) {
  std::vector<std::string> parts;
  bool exact = success_part == "exact_match";
  if (success_part.empty()) {
    for (const auto& src : Sources()) {
      const double w = config.*src.weight;
      if (w == 0) continue;
      parts.push_back(w == 1 ? src.name : absl::StrCat(src.name, " x", w));
      exact = exact || src.name == "exact_match";
    }
  } else {
    parts.push_back(success_part);
  }
  std::string out = parts.empty() ? std::string("reward") : absl::StrJoin(parts, " + ");
  if (success_part.empty() && parts.size() > 1) out = absl::StrCat("reward (", out, ")");
  if (exact) absl::StrAppend(&out, " (reward.extract ", ExtractModeName(config.extract), ")");
  return absl::StrCat(out, " >= ", threshold);
}

}  // namespace rlhf::scoring

// The rule-based reward sources: exact_match, format, length, missing_eos, and the sandboxed code verifier.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <regex>

#include "absl/strings/str_cat.h"
#include "services/scoring/sandbox.h"
#include "services/scoring/scorer.h"
#include "services/scoring/sources.h"
#include "services/scoring/verifiers.h"

namespace rlhf::scoring {

namespace {

// 1 when the completion's final answer equals the sample's ground-truth field (verifiers.h), else 0; a
// sample without that field is an error.
class ExactMatchSource : public RewardSource {
 public:
  explicit ExactMatchSource(const RewardConfig& c) : field_(c.answer_field), mode_(c.extract) {}
  void Score(ScoreBatch& b) override {
    for (size_t i = 0; i < b.samples.size(); ++i) {
      const Sample& s = b.samples[i];
      auto it = s.extra().find(field_);
      if (it == s.extra().end()) {
        b.Fail(i, "exact_match", absl::InvalidArgumentError(absl::StrCat("the sample has no '", field_, "' field")));
        continue;
      }
      b.Set(i, "exact_match", AnswerMatches(s.completion(), ExtraText(it->second), mode_) ? 1.f : 0.f);
    }
  }

 private:
  std::string field_;
  ExtractMode mode_;
};

// 1 when the whole completion matches the regex (ECMAScript), else 0.
class FormatSource : public RewardSource {
 public:
  explicit FormatSource(std::regex re) : re_(std::move(re)) {}
  void Score(ScoreBatch& b) override {
    for (size_t i = 0; i < b.samples.size(); ++i) b.Set(i, "format", std::regex_match(b.samples[i].completion(), re_) ? 1.f : 0.f);
  }

 private:
  std::regex re_;
};

// -max(0, completion tokens - free_tokens) / scale_tokens.
class LengthSource : public RewardSource {
 public:
  explicit LengthSource(const RewardConfig& c) : free_(c.length_free_tokens), scale_(c.length_scale_tokens) {}
  void Score(ScoreBatch& b) override {
    for (size_t i = 0; i < b.samples.size(); ++i) {
      const double excess = std::max<double>(0.0, static_cast<double>(b.samples[i].completion_ids_size() - free_));
      b.Set(i, "length", static_cast<float>(-excess / scale_));
    }
  }

 private:
  int64_t free_;
  double scale_;
};

// -1 when the completion was cut at the length limit, else 0.
class MissingEosSource : public RewardSource {
 public:
  void Score(ScoreBatch& b) override {
    for (size_t i = 0; i < b.samples.size(); ++i) {
      b.Set(i, "missing_eos", b.samples[i].finish_reason() == FINISH_REASON_LENGTH ? -1.f : 0.f);
    }
  }
};

// 1 when the test command exits 0 in the sandbox with the completion's code in code_file (and the sample's
// tests field in "tests"), else 0. Where the sandbox cannot isolate (no user namespaces), every sample gets
// FAILED_PRECONDITION with the reason: nothing runs unconfined and the scorer serves on.
class CodeSource : public RewardSource {
 public:
  CodeSource(const RewardConfig& c, SandboxLimits limits, absl::Status refusal)
      : config_(c), limits_(limits), refusal_(std::move(refusal)) {}
  void Score(ScoreBatch& b) override {
    for (size_t i = 0; i < b.samples.size(); ++i) {
      const Sample& s = b.samples[i];
      std::map<std::string, std::string> files = {{config_.code_file, ExtractCode(s.completion())}};
      auto it = s.extra().find(config_.code_tests_field);
      if (it != s.extra().end()) files["tests"] = ExtraText(it->second);
      auto run = refusal_.ok() ? RunSandboxed(config_.code_command, files, limits_) : absl::StatusOr<SandboxResult>(refusal_);
      if (!run.ok()) {
        b.Fail(i, "code", run.status());
      } else {
        b.Set(i, "code", (run->exit_code == 0 && !run->timed_out) ? 1.f : 0.f);
      }
    }
  }
  absl::Status refusal() const override { return refusal_; }

 private:
  const RewardConfig config_;
  const SandboxLimits limits_;
  const absl::Status refusal_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RewardSource>> MakeExactMatchSource(const SourceContext& c) {
  spdlog::info("exact_match: the '{}' field against the completion, verifier mode {} (reward.extract)",
               c.config.answer_field, ExtractModeName(c.config.extract));
  return std::make_unique<ExactMatchSource>(c.config);
}

absl::StatusOr<std::unique_ptr<RewardSource>> MakeFormatSource(const SourceContext& c) {
  if (c.config.format_pattern.empty()) return absl::InvalidArgumentError("reward.format_weight needs reward.format_pattern");
  try {
    return std::make_unique<FormatSource>(std::regex(c.config.format_pattern, std::regex::ECMAScript));
  } catch (const std::regex_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("reward.format_pattern does not compile: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<RewardSource>> MakeLengthSource(const SourceContext& c) {
  return std::make_unique<LengthSource>(c.config);
}

absl::StatusOr<std::unique_ptr<RewardSource>> MakeMissingEosSource(const SourceContext&) {
  return std::make_unique<MissingEosSource>();
}

absl::StatusOr<std::unique_ptr<RewardSource>> MakeCodeSource(const SourceContext& c) {
  if (c.config.code_command.empty()) return absl::InvalidArgumentError("reward.code_weight needs reward.code_command");
  // Where the sandbox cannot isolate, refuse the code reward (visibly, with the reason) and serve the rest:
  // never run generated code unconfined, never let the missing isolation take the process down.
  SandboxLimits limits;
  limits.wall_seconds = c.config.code_wall_seconds;
  limits.cpu_seconds = c.config.code_cpu_seconds;
  limits.memory_mb = c.config.code_memory_mb;
  auto probe = RunSandboxed("true", {}, limits);
  if (probe.ok() && probe->exit_code != 0) {
    probe = absl::FailedPreconditionError(absl::StrCat("the code sandbox does not run commands here (a probe exited ",
                                                       probe->exit_code, ": ", probe->output, ")"));
  }
  if (!probe.ok() && probe.status().code() != absl::StatusCode::kFailedPrecondition) return probe.status();
  absl::Status refusal;
  if (!probe.ok()) {
    refusal = probe.status();
    spdlog::error("reward.code_weight: the code reward is refused on this machine: {}; every sample gets this "
                  "error instead of a code reward, the other sources keep serving",
                  std::string(refusal.message()));
  } else {
    spdlog::info("code reward sandbox: own namespaces and read-only root, uid 65534 without capabilities, system-call "
                 "filter, rlimits; cgroup caps: {}",
                 probe->cgroups.empty() ? "none here (rlimits only)" : probe->cgroups);
  }
  return std::make_unique<CodeSource>(c.config, limits, refusal);
}

}  // namespace rlhf::scoring

// rlhf score: the scorer offline (samples JSONL in, scored samples JSONL out); `rlhf serve scorer` (serve.cc)
// is the same scorer behind gRPC rlhf.Scorer.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <thread>

#include "cli/command.h"
#include "common/file.h"
#include "common/metrics.h"
#include "common/rpc.h"
#include "common/sample_json.h"
#include "services/scoring/scorer.h"
#include "services/scoring/service.h"
#include "services/scoring/sources.h"
#include "services/scoring/verifiers.h"

namespace rlhf::cli {

namespace {
struct ScoreFilesConfig {
  std::string samples;  // input JSONL of samples
  std::string out;      // output JSONL of scored samples
  bool ref_logprobs = true;  // add reference log-probs when a reference model is configured
  bool explain = false;      // print, per sample, what exact_match extracted and why it matched or not
  static const config::Section<ScoreFilesConfig>& Spec() {
    static const auto* s = [] {
      using S = ScoreFilesConfig;
      auto* s = new config::Section<S>("score");
      s->Add("samples", &S::samples, "input JSONL of samples (the shared sample form)");
      s->Add("out", &S::out, "output JSONL: the samples with reward, reward_parts (and ref_logprobs)");
      s->Add("ref_logprobs", &S::ref_logprobs, "add reference log-probs when reward.reference_model is set");
      s->Add("explain", &S::explain,
             "print one line per sample: the reward.extract mode, the rule that found the answer, the answer and "
             "the truth as compared, and why they matched or not");
      return s;
    }();
    return *s;
  }
};

}  // namespace

Command ScoreCommand() {
  Command c;
  c.name = "score";
  c.help = "score a JSONL of samples with the configured reward sources (and reference log-probs)";
  c.add_sections = [](config::Schema& s) {
    ScoreFilesConfig::Spec().Register(s);
    scoring::RewardConfig::Spec().Register(s);
  };
  c.flags = {{"samples", "score.samples", "input samples JSONL"},
             {"out", "score.out", "output JSONL"},
             {"explain", "score.explain", "say what exact_match extracted from each sample and why it matched", true}};
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = ScoreFilesConfig::Spec().Read(ctx.config);
    if (cfg.samples.empty() || cfg.out.empty()) return absl::InvalidArgumentError("give --samples F.jsonl --out G.jsonl");
    ASSIGN_OR_RETURN(auto scorer, scoring::Scorer::Create(scoring::RewardConfig::Spec().Read(ctx.config)));
    ASSIGN_OR_RETURN(auto samples, ReadSamplesJsonl(cfg.samples));
    const bool want_ref = cfg.ref_logprobs && scorer->has_reference();
    ASSIGN_OR_RETURN(auto outcomes, scorer->Score(samples, want_ref));
    int64_t failed = 0;
    double total = 0;
    for (size_t i = 0; i < samples.size(); ++i) {
      if (!outcomes[i].status.ok()) {
        ++failed;
        spdlog::warn("sample {} (prompt {}): {}", i, samples[i].prompt_id(), std::string(outcomes[i].status.message()));
      } else {
        total += samples[i].reward();
      }
    }
    if (cfg.explain) {
      const auto rc = scoring::RewardConfig::Spec().Read(ctx.config);
      for (size_t i = 0; i < samples.size(); ++i) {
        const auto it = samples[i].extra().find(rc.answer_field);
        if (it == samples[i].extra().end()) {
          std::printf("sample %zu: no '%s' field: nothing to compare\n", i, rc.answer_field.c_str());
          continue;
        }
        const auto e = scoring::ExplainMatch(samples[i].completion(), scoring::ExtraText(it->second), rc.extract);
        const nlohmann::json answer = e.extracted ? e.answer : "", truth = e.truth;
        std::printf("sample %zu: %s [%s] %s%s%s vs truth %s: %s\n", i, e.matched ? "MATCH" : "no match", e.mode.c_str(),
                    e.rule.empty() ? "" : e.rule.c_str(), e.rule.empty() ? "" : " ",
                    e.extracted ? answer.dump().c_str() : "(no answer)", truth.dump().c_str(), e.why.c_str());
      }
    }
    RETURN_IF_ERROR(WriteFileAtomic(cfg.out, [&](FileSink& o) -> absl::Status {
      for (const auto& s : samples) RETURN_IF_ERROR(o.Write(SampleToJson(s) + "\n"));  // failed ones kept, without a reward
      return absl::OkStatus();
    }));
    const int64_t ok = static_cast<int64_t>(samples.size()) - failed;
    std::printf("scored %lld samples (%lld failed, kept without a reward); mean reward %.4f -> %s\n",
                static_cast<long long>(samples.size()), static_cast<long long>(failed), ok > 0 ? total / ok : 0.0,
                cfg.out.c_str());
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli

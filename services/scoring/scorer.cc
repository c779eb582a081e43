#include "services/scoring/scorer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <numeric>
#include <nlohmann/json.hpp>
#include <regex>

#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/model/checkpoint.h"
#include "common/text/tokenizer.h"
#include "services/scoring/forward.h"
#include "services/scoring/judge.h"
#include "services/scoring/process.h"
#include "services/scoring/sandbox.h"
#include "services/scoring/verifiers.h"

namespace rlhf::scoring {

const config::Section<RewardConfig>& RewardConfig::Spec() {
  static const auto* s = [] {
    using R = RewardConfig;
    auto* s = new config::Section<R>("reward");
    s->Add("exact_match_weight", &R::exact_match_weight, "weight of the exact-match reward (1 right, 0 wrong); 0 = off");
    s->Add("answer_field", &R::answer_field, "pass-through sample field holding the ground-truth answer");
    s->Add("extract", &R::extract, "answer extraction: strict (boxed, 'answer is', ####) | flexible (else the last number)",
           config::OneOf({"strict", "flexible"}));
    s->Add("format_weight", &R::format_weight, "weight of the format reward (1 when the regex matches); 0 = off");
    s->Add("format_pattern", &R::format_pattern, "ECMAScript regex the whole completion text must match");
    s->Add("length_weight", &R::length_weight, "weight of the length penalty; 0 = off");
    s->Add("length_free_tokens", &R::length_free_tokens, "completion tokens without length penalty", config::AtLeast(0));
    s->Add("length_scale_tokens", &R::length_scale_tokens, "tokens beyond the free ones that cost 1", config::AtLeast(1));
    s->Add("missing_eos_weight", &R::missing_eos_weight, "weight of the missing-EOS penalty (-1 when truncated); 0 = off");
    s->Add("code_weight", &R::code_weight, "weight of the sandboxed code verifier (1 when the test command passes); 0 = off");
    s->Add("code_command", &R::code_command, "shell command run in the sandbox's scratch directory; exit 0 = pass");
    s->Add("code_file", &R::code_file, "file the completion's code (its last fenced block, else all of it) is written to");
    s->Add("code_tests_field", &R::code_tests_field, "pass-through field written to the file 'tests' when present");
    s->Add("code_wall_seconds", &R::code_wall_seconds, "sandbox wall-clock limit", config::AtLeast(0.1));
    s->Add("code_cpu_seconds", &R::code_cpu_seconds, "sandbox CPU-time limit", config::AtLeast(1));
    s->Add("code_memory_mb", &R::code_memory_mb, "sandbox address-space limit", config::AtLeast(16));
    s->Add("reward_model_weight", &R::reward_model_weight, "weight of the reward model's score; 0 = off");
    s->Add("reward_model", &R::reward_model, "HF model folder with a score head (reward model)");
    s->Add("judge_weight", &R::judge_weight, "weight of the judge's score (a probability); 0 = off");
    s->Add("judge_model", &R::judge_model, "HF folder of the judge, a causal LM");
    s->Add("judge_tokenizer", &R::judge_tokenizer, "tokenizer folder or tokenizer.json of the judge; \"\" = judge_model");
    s->Add("judge_constitution", &R::judge_constitution, "text file of principles, filled in for {constitution}");
    s->Add("judge_mode", &R::judge_mode, "pointwise (P(yes) per response) | pairwise (mean P(better) against the prompt's other samples, both orders)",
           config::OneOf({"pointwise", "pairwise"}));
    s->Add("judge_template", &R::judge_template, "pointwise judge prompt with {constitution}, {prompt}, {completion}");
    s->Add("judge_pair_template", &R::judge_pair_template, "pairwise judge prompt with {constitution}, {prompt}, {first}, {second}");
    s->Add("judge_yes", &R::judge_yes, "pointwise verdict text scored as the response's probability");
    s->Add("judge_no", &R::judge_no, "pointwise verdict text against");
    s->Add("judge_first", &R::judge_first, "pairwise verdict text for the first response");
    s->Add("judge_second", &R::judge_second, "pairwise verdict text for the second response");
    s->Add("judge_chat_template", &R::judge_chat_template, "render the judge prompt as the user message of the judge's chat template");
    s->Add("monitor", &R::monitor,
           "rule-based sources (exact_match, format, length, missing_eos) computed with weight 0: in reward_parts "
           "for statistics and eval.success_part, not in the reward");
    s->Add("process_weight", &R::process_weight, "weight of the aggregated per-step process reward; 0 = off");
    s->Add("process_source", &R::process_source, "checker (rule-based arithmetic steps) | model (process reward model)",
           config::OneOf({"checker", "model"}));
    s->Add("process_model", &R::process_model, "HF folder with a score head (num_labels 1) scoring each step's last token");
    s->Add("process_separator", &R::process_separator, "text that ends a step");
    s->Add("process_aggregate", &R::process_aggregate, "process reward from the step scores: mean | min | last",
           config::OneOf({"mean", "min", "last"}));
    s->Add("tokenizer", &R::tokenizer, "the policy's tokenizer (folder or tokenizer.json): places step ends on tokens; needed by process_source model");
    s->Add("reference_model", &R::reference_model, "HF folder of the frozen reference policy; \"\" = none");
    s->Add("batch_tokens", &R::batch_tokens, "padded tokens per model forward", config::AtLeast(1));
    s->Add("dtype", &R::dtype, "compute dtype of the models: \"\" = the checkpoint's, float32, bfloat16",
           config::OneOf({"", "float32", "bfloat16", "f32", "bf16"}));
    return s;
  }();
  return *s;
}

SandboxLimits Scorer::Limits() const {
  SandboxLimits l;
  l.wall_seconds = config_.code_wall_seconds;
  l.cpu_seconds = config_.code_cpu_seconds;
  l.memory_mb = config_.code_memory_mb;
  return l;
}

std::string ExtractCode(const std::string& completion) {
  // The last ``` fenced block (its info string, e.g. "python", dropped), else the whole completion.
  const size_t close = completion.rfind("```");
  if (close != std::string::npos && close > 0) {
    const size_t open = completion.rfind("```", close - 1);
    if (open != std::string::npos) {
      size_t body = completion.find('\n', open);
      if (body != std::string::npos && body < close) return completion.substr(body + 1, close - body - 1);
    }
  }
  return completion;
}

struct Scorer::FormatRe {
  std::regex re;
};

Scorer::Scorer(RewardConfig config) : config_(std::move(config)) {}

bool Scorer::On(const char* name, double weight) const {
  return weight != 0 || std::find(config_.monitor.begin(), config_.monitor.end(), name) != config_.monitor.end();
}
Scorer::~Scorer() = default;

absl::StatusOr<std::unique_ptr<Scorer>> Scorer::Create(const RewardConfig& config) {
  std::unique_ptr<Scorer> s(new Scorer(config));
  if (s->SourceNames().empty()) {
    return absl::InvalidArgumentError("no reward source is on: give one a weight (reward.*_weight)");
  }
  for (const auto& m : config.monitor) {
    if (m != "exact_match" && m != "format" && m != "length" && m != "missing_eos") {
      return absl::InvalidArgumentError(absl::StrCat("reward.monitor: '", m,
                                                     "' is not a rule-based source (exact_match, format, length, missing_eos)"));
    }
  }
  if (s->On("format", config.format_weight)) {
    if (config.format_pattern.empty()) return absl::InvalidArgumentError("reward.format_weight needs reward.format_pattern");
    try {
      s->format_ = std::make_shared<FormatRe>(FormatRe{std::regex(config.format_pattern, std::regex::ECMAScript)});
    } catch (const std::regex_error& e) {
      return absl::InvalidArgumentError(absl::StrCat("reward.format_pattern does not compile: ", e.what()));
    }
  }
  if (config.code_weight != 0) {
    if (config.code_command.empty()) return absl::InvalidArgumentError("reward.code_weight needs reward.code_command");
    // Where the sandbox cannot isolate, refuse the code reward (visibly, with the reason) and serve the rest:
    // never run generated code unconfined, never let the missing isolation take the process down.
    auto probe = RunSandboxed("true", {}, s->Limits());
    if (probe.ok() && probe->exit_code != 0) {
      probe = absl::FailedPreconditionError(absl::StrCat("the code sandbox does not run commands here (a probe exited ",
                                                         probe->exit_code, ": ", probe->output, ")"));
    }
    if (!probe.ok() && probe.status().code() != absl::StatusCode::kFailedPrecondition) return probe.status();
    if (!probe.ok()) {
      s->code_refusal_ = probe.status();
      spdlog::error("reward.code_weight: the code reward is refused on this machine: {}; every sample gets this "
                    "error instead of a code reward, the other sources keep serving",
                    std::string(probe.status().message()));
    }
  }
  ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(config.dtype));
  if (config.reward_model_weight != 0) {
    if (config.reward_model.empty()) return absl::InvalidArgumentError("reward.reward_model_weight needs reward.reward_model");
    auto lo = load;
    lo.head = model::Head::kSequenceClassification;
    ASSIGN_OR_RETURN(s->reward_model_, model::LoadModel(config.reward_model, lo));
  }
  if (!config.reference_model.empty()) {
    ASSIGN_OR_RETURN(s->reference_, model::LoadModel(config.reference_model, load));
  }
  if (config.judge_weight != 0) {
    ASSIGN_OR_RETURN(s->judge_, Judge::Create(config));
  }
  if (!config.tokenizer.empty()) {
    ASSIGN_OR_RETURN(auto tok, text::Tokenizer::FromFile(config.tokenizer));
    s->tokenizer_ = std::make_shared<text::Tokenizer>(std::move(tok));
  }
  if (config.process_weight != 0) {
    if (config.process_separator.empty()) return absl::InvalidArgumentError("reward.process_separator is empty");
    if (config.process_source == "model") {
      if (config.process_model.empty()) return absl::InvalidArgumentError("reward.process_source model needs reward.process_model");
      if (!s->tokenizer_) return absl::InvalidArgumentError("reward.process_source model needs reward.tokenizer to place step ends");
      ASSIGN_OR_RETURN(s->process_model_, model::LoadModel(config.process_model, load));
      if (s->process_model_->score.is_empty() || s->process_model_->config().num_labels != 1) {
        return absl::InvalidArgumentError("reward.process_model needs a score head with num_labels 1");
      }
    }
  }
  return s;
}

std::vector<std::string> Scorer::SourceNames() const {
  std::vector<std::string> out;
  if (config_.exact_match_weight != 0) out.push_back("exact_match");
  if (config_.format_weight != 0) out.push_back("format");
  if (config_.length_weight != 0) out.push_back("length");
  if (config_.missing_eos_weight != 0) out.push_back("missing_eos");
  if (config_.code_weight != 0) out.push_back("code");
  if (config_.reward_model_weight != 0) out.push_back("reward_model");
  if (config_.judge_weight != 0) out.push_back("judge");
  if (config_.process_weight != 0) out.push_back("process");
  return out;
}

absl::Status Scorer::Validate(const Sample& s, bool want_ref) const {
  for (const auto* net : {&reward_model_, &reference_, &process_model_}) {
    if (net->is_empty()) continue;
    const auto& c = (*net)->config();
    if (s.prompt_ids_size() + s.completion_ids_size() > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("prompt + completion = ", s.prompt_ids_size() + s.completion_ids_size(),
                                                     " tokens exceed the model's context of ", c.max_position_embeddings));
    }
    for (const auto& ids : {s.prompt_ids(), s.completion_ids()}) {
      for (int32_t id : ids) {
        if (id < 0 || id >= c.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary of ", c.vocab_size));
        }
      }
    }
  }
  if ((!reward_model_.is_empty() || !process_model_.is_empty() || (want_ref && !reference_.is_empty())) &&
      s.prompt_ids_size() + s.completion_ids_size() == 0) {
    return absl::InvalidArgumentError("a sample without token ids cannot be scored by a model");
  }
  if (want_ref && !reference_.is_empty() && s.completion_ids_size() > 0 && !(s.temperature() >= 0)) {
    return absl::InvalidArgumentError("temperature must be >= 0 (0 = greedy, taken as 1)");
  }
  if (s.logprobs_size() != 0 && s.logprobs_size() != s.completion_ids_size()) {
    return absl::InvalidArgumentError("logprobs and completion_ids differ in length");
  }
  return absl::OkStatus();
}

namespace {

std::vector<TokenRow> Rows(const std::vector<const Sample*>& samples) {
  std::vector<TokenRow> rows;
  for (const Sample* s : samples) {
    rows.push_back({s->prompt_ids().data(), s->prompt_ids_size(), s->completion_ids().data(), s->completion_ids_size(),
                    s->temperature()});
  }
  return rows;
}

// A pass-through value as text: a JSON string unquoted, anything else as written.
std::string ExtraText(const std::string& json_text) {
  auto j = nlohmann::json::parse(json_text, nullptr, false);
  return (!j.is_discarded() && j.is_string()) ? j.get<std::string>() : json_text;
}

}  // namespace

std::vector<float> Scorer::RewardModelScores(const std::vector<const Sample*>& rows) {
  return LastTokenScores(reward_model_, Rows(rows), config_.batch_tokens);
}

std::vector<std::vector<float>> Scorer::ReferenceLogProbs(const std::vector<const Sample*>& rows) {
  return CompletionLogProbs(reference_, Rows(rows), config_.batch_tokens);
}

void Scorer::ScoreJudge(std::vector<Sample>& samples, const std::vector<int32_t>& groups,
                        std::vector<std::map<std::string, float>>& parts,
                        const std::function<void(size_t, absl::Status)>& fail) {
  const size_t n = samples.size();
  if (config_.judge_mode == "pointwise") {
    std::vector<std::pair<std::string, std::string>> items;
    for (const auto& s : samples) items.emplace_back(s.prompt(), s.completion());
    auto p = judge_->Pointwise(items);
    for (size_t i = 0; i < n; ++i) {
      if (p[i].ok()) {
        parts[i]["judge"] = static_cast<float>(*p[i]);
      } else {
        fail(i, p[i].status());
      }
    }
    return;
  }
  // Pairwise: every pair of samples of one prompt (and group), judged in both orders.
  std::map<std::pair<int32_t, std::string>, std::vector<size_t>> by_prompt;
  for (size_t i = 0; i < n; ++i) by_prompt[{groups.empty() ? 0 : groups[i], samples[i].prompt_id()}].push_back(i);
  std::vector<Judge::Pair> pairs;
  std::vector<std::pair<size_t, size_t>> who;
  for (const auto& [key, members] : by_prompt) {
    if (members.size() < 2) {
      fail(members[0], absl::InvalidArgumentError("pairwise judging needs two or more samples of the prompt in one request"));
      continue;
    }
    for (size_t a = 0; a < members.size(); ++a) {
      for (size_t b = a + 1; b < members.size(); ++b) {
        const Sample& sa = samples[members[a]];
        pairs.push_back({sa.prompt(), sa.completion(), samples[members[b]].completion()});
        who.emplace_back(members[a], members[b]);
      }
    }
  }
  auto p = judge_->Pairwise(pairs);
  std::vector<double> wins(n, 0.0);
  std::vector<int> games(n, 0);
  for (size_t k = 0; k < pairs.size(); ++k) {
    const auto [a, b] = who[k];
    if (!p[k].ok()) {
      fail(a, p[k].status());
      fail(b, p[k].status());
      continue;
    }
    wins[a] += *p[k], wins[b] += 1.0 - *p[k];
    ++games[a], ++games[b];
  }
  for (size_t i = 0; i < n; ++i) {
    if (games[i] > 0) parts[i]["judge"] = static_cast<float>(wins[i] / games[i]);
  }
}

void Scorer::ScoreProcess(std::vector<Sample>& samples, std::vector<std::map<std::string, float>>& parts,
                          const std::function<void(size_t, absl::Status)>& fail) {
  const size_t n = samples.size();
  std::vector<std::vector<Step>> steps(n);
  std::vector<bool> ok(n, true);
  for (size_t i = 0; i < n; ++i) {
    Sample& s = samples[i];
    s.clear_step_rewards();
    s.clear_step_ends();
    const bool placed = tokenizer_ && s.completion_ids_size() > 0;
    std::string text = s.completion();
    std::vector<int32_t> ids(s.completion_ids().begin(), s.completion_ids().end());
    if (placed) {
      // Steps are cut in the text the tokens decode to, so that their ends fall on tokens.
      auto decoded = tokenizer_->Decode(ids, /*skip_special_tokens=*/true);
      if (!decoded.ok()) {
        fail(i, decoded.status());
        ok[i] = false;
        continue;
      }
      text = *decoded;
    } else if (!process_model_.is_empty()) {
      fail(i, absl::InvalidArgumentError("the process reward model needs completion_ids"));
      ok[i] = false;
      continue;
    }
    for (auto& step : SplitSteps(text, config_.process_separator)) {
      if (process_model_.is_empty()) {
        auto score = CheckArithmeticStep(step.text);
        if (!score) continue;  // no equation: not a scored step
        s.add_step_rewards(*score);
      }
      steps[i].push_back(std::move(step));
    }
    if (placed) {
      std::vector<size_t> ends;
      for (const auto& st : steps[i]) ends.push_back(st.end);
      auto token_ends = TokenEnds(*tokenizer_, ids, ends);
      if (!token_ends.ok()) {
        fail(i, token_ends.status());
        ok[i] = false;
        continue;
      }
      for (int32_t e : *token_ends) s.add_step_ends(e);
    }
  }
  if (!process_model_.is_empty()) {
    std::vector<const Sample*> rows;
    std::vector<size_t> row_of;
    for (size_t i = 0; i < n; ++i) {
      if (ok[i] && !steps[i].empty()) rows.push_back(&samples[i]), row_of.push_back(i);
    }
    auto scores = CompletionTokenScores(process_model_, Rows(rows), config_.batch_tokens);
    for (size_t k = 0; k < rows.size(); ++k) {
      Sample& s = samples[row_of[k]];
      for (int32_t e : s.step_ends()) s.add_step_rewards(1.f / (1.f + std::exp(-scores[k][static_cast<size_t>(e)])));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (!ok[i]) continue;
    const Sample& s = samples[i];
    if (std::any_of(s.step_rewards().begin(), s.step_rewards().end(), [](float v) { return !std::isfinite(v); })) {
      fail(i, absl::InternalError("a step score is not finite"));
      continue;
    }
    parts[i]["process"] = AggregateSteps({s.step_rewards().begin(), s.step_rewards().end()}, config_.process_aggregate);
  }
}

absl::StatusOr<std::vector<ScoreOutcome>> Scorer::Score(std::vector<Sample>& samples, bool want_ref,
                                                         const std::vector<int32_t>& groups) {
  if (!groups.empty() && groups.size() != samples.size()) {
    return absl::InvalidArgumentError("groups must be empty or name one group per sample");
  }
  const size_t n = samples.size();
  std::vector<ScoreOutcome> outcomes(n);
  std::vector<std::map<std::string, float>> parts(n);
  auto failures = [](const std::string& source) -> prometheus::Counter& {
    return Metrics::Process().Counter("rlhf_reward_failures_total", "samples a reward source could not score",
                                      {{"source", source}});
  };
  auto fail = [&](size_t i, const std::string& source, absl::Status st) {
    if (outcomes[i].status.ok()) {
      outcomes[i].status = absl::Status(st.code(), absl::StrCat(source, ": ", st.message()));
      failures(source).Increment();
    }
  };
  for (size_t i = 0; i < n; ++i) {
    const Sample& s = samples[i];
    if (On("exact_match", config_.exact_match_weight)) {
      auto it = s.extra().find(config_.answer_field);
      if (it == s.extra().end()) {
        fail(i, "exact_match", absl::InvalidArgumentError(absl::StrCat("the sample has no '", config_.answer_field, "' field")));
      } else {
        const std::string truth = ExtraText(it->second);
        auto mode = config_.extract == "strict" ? ExtractMode::kStrict : ExtractMode::kFlexible;
        parts[i]["exact_match"] = AnswerMatches(s.completion(), truth, mode) ? 1.f : 0.f;
      }
    }
    if (format_) parts[i]["format"] = std::regex_match(s.completion(), format_->re) ? 1.f : 0.f;
    if (On("length", config_.length_weight)) {
      const double excess = std::max<double>(0.0, static_cast<double>(s.completion_ids_size() - config_.length_free_tokens));
      parts[i]["length"] = static_cast<float>(-excess / config_.length_scale_tokens);
    }
    if (On("missing_eos", config_.missing_eos_weight)) parts[i]["missing_eos"] = s.finish_reason() == FINISH_REASON_LENGTH ? -1.f : 0.f;
    if (config_.code_weight != 0) {
      std::map<std::string, std::string> files = {{config_.code_file, ExtractCode(s.completion())}};
      auto it = s.extra().find(config_.code_tests_field);
      if (it != s.extra().end()) files["tests"] = ExtraText(it->second);
      auto run = code_refusal_.ok() ? RunSandboxed(config_.code_command, files, Limits())
                                    : absl::StatusOr<SandboxResult>(code_refusal_);
      if (!run.ok()) {
        fail(i, "code", run.status());
      } else {
        parts[i]["code"] = (run->exit_code == 0 && !run->timed_out) ? 1.f : 0.f;
      }
    }
  }
  // Model sources, batched over the samples every check accepts.
  std::vector<const Sample*> rows;
  std::vector<size_t> row_of;
  for (size_t i = 0; i < n; ++i) {
    absl::Status v = Validate(samples[i], want_ref);
    if (!v.ok()) {
      fail(i, "input", v);
      continue;
    }
    rows.push_back(&samples[i]);
    row_of.push_back(i);
  }
  RETURN_IF_ERROR(GuardExceptions("scoring forward", [&]() -> absl::Status {
    if (!reward_model_.is_empty() && !rows.empty()) {
      auto scores = RewardModelScores(rows);
      for (size_t k = 0; k < rows.size(); ++k) {
        if (std::isfinite(scores[k])) {
          parts[row_of[k]]["reward_model"] = scores[k];
        } else {
          fail(row_of[k], "reward_model", absl::InternalError("the reward model's score is not finite"));
        }
      }
    }
    if (judge_) ScoreJudge(samples, groups, parts, [&](size_t i, absl::Status st) { fail(i, "judge", st); });
    if (config_.process_weight != 0) {
      ScoreProcess(samples, parts, [&](size_t i, absl::Status st) { fail(i, "process", st); });
    }
    if (want_ref && !reference_.is_empty() && !rows.empty()) {
      auto ref = ReferenceLogProbs(rows);
      for (size_t k = 0; k < rows.size(); ++k) {
        Sample& s = samples[row_of[k]];
        s.clear_ref_logprobs();
        double kl = 0;
        for (size_t j = 0; j < ref[k].size(); ++j) {
          s.add_ref_logprobs(ref[k][j]);
          if (s.logprobs_size() == static_cast<int>(ref[k].size())) kl += s.logprobs(static_cast<int>(j)) - ref[k][j];
        }
        if (!ref[k].empty() && s.logprobs_size() == static_cast<int>(ref[k].size())) {
          outcomes[row_of[k]].kl_behaviour = static_cast<float>(kl / static_cast<double>(ref[k].size()));
        }
      }
    }
    return absl::OkStatus();
  }));
  // Totals: only samples that every source scored.
  const std::map<std::string, double> weights = {{"exact_match", config_.exact_match_weight},
                                                 {"format", config_.format_weight},
                                                 {"length", config_.length_weight},
                                                 {"missing_eos", config_.missing_eos_weight},
                                                 {"code", config_.code_weight},
                                                 {"reward_model", config_.reward_model_weight},
                                                 {"judge", config_.judge_weight},
                                                 {"process", config_.process_weight}};
  for (size_t i = 0; i < n; ++i) {
    Sample& s = samples[i];
    s.clear_reward();
    s.mutable_reward_parts()->clear();
    if (!outcomes[i].status.ok()) {
      s.clear_step_rewards();
      s.clear_step_ends();
      continue;
    }
    double total = 0;
    for (const auto& [name, value] : parts[i]) {
      (*s.mutable_reward_parts())[name] = value;
      total += weights.at(name) * value;
    }
    s.set_reward(static_cast<float>(total));
  }
  return outcomes;
}

}  // namespace rlhf::scoring

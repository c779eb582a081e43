#include "services/scoring/scorer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <numeric>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/model/checkpoint.h"
#include "common/text/tokenizer.h"
#include "services/scoring/forward.h"
#include "services/scoring/sources.h"

namespace rlhf::scoring {

const config::Section<RewardConfig>& RewardConfig::Spec() {
  static const auto* s = [] {
    using R = RewardConfig;
    auto* s = new config::Section<R>("reward");
    s->Add("exact_match_weight", &R::exact_match_weight, "weight of the exact-match reward (1 right, 0 wrong); 0 = off");
    s->Add("answer_field", &R::answer_field, "pass-through sample field holding the ground-truth answer");
    s->AddChoice("extract", &R::extract, ExtractModes(),
                 "how exact_match finds and compares the answer (services/scoring/verifiers.h): flexible (a marked "
                 "answer, else as many last numbers as the truth holds, else the last number) | strict (boxed, "
                 "'answer is', #### only) | whole (the whole completion) | number (exactly one number) | numbers "
                 "(every number, in order) | last_number");
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
    s->AddChoice("judge_mode", &R::judge_mode, {{"pointwise", JudgeMode::kPointwise}, {"pairwise", JudgeMode::kPairwise}},
                 "pointwise (P(yes) per response) | pairwise (mean P(better) against the prompt's other samples, both orders)");
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
    s->AddChoice("process_source", &R::process_source,
                 {{"checker", ProcessSourceKind::kChecker}, {"model", ProcessSourceKind::kModel}},
                 "checker (rule-based arithmetic steps) | model (process reward model)");
    s->Add("process_model", &R::process_model, "HF folder with a score head (num_labels 1) scoring each step's last token");
    s->Add("process_separator", &R::process_separator, "text that ends a step");
    s->AddChoice("process_aggregate", &R::process_aggregate,
                 {{"mean", StepAggregate::kMean}, {"min", StepAggregate::kMin}, {"last", StepAggregate::kLast}},
                 "process reward from the step scores: mean | min | last");
    s->Add("tokenizer", &R::tokenizer, "the policy's tokenizer (folder or tokenizer.json): places step ends on tokens; needed by process_source model");
    s->Add("reference_model", &R::reference_model, "HF folder of the frozen reference policy; \"\" = none");
    s->Add("batch_tokens", &R::batch_tokens, "padded tokens per model forward", config::AtLeast(1));
    s->Add("dtype", &R::dtype, "compute dtype of the models: \"\" = the checkpoint's, float32, bfloat16",
           config::OneOf({"", "float32", "bfloat16", "f32", "bf16"}));
    return s;
  }();
  return *s;
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

Scorer::Scorer(RewardConfig config) : config_(std::move(config)) {}
Scorer::~Scorer() = default;

absl::StatusOr<std::unique_ptr<Scorer>> Scorer::Create(const RewardConfig& config) {
  std::unique_ptr<Scorer> s(new Scorer(config));
  if (std::none_of(Sources().begin(), Sources().end(), [&](const SourceSpec& spec) { return config.*spec.weight != 0; })) {
    return absl::InvalidArgumentError("no reward source is on: give one a weight (reward.*_weight)");
  }
  for (const auto& m : config.monitor) {
    const auto& all = Sources();
    auto it = std::find_if(all.begin(), all.end(), [&](const SourceSpec& spec) { return spec.name == m; });
    if (it == all.end() || !it->monitorable) {
      return absl::InvalidArgumentError(absl::StrCat("reward.monitor: '", m,
                                                     "' is not a rule-based source (exact_match, format, length, missing_eos)"));
    }
  }
  ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(config.dtype));
  SourceContext context{s->config_, load, nullptr};
  if (!config.tokenizer.empty()) {
    ASSIGN_OR_RETURN(auto tok, text::Tokenizer::FromFile(config.tokenizer));
    context.tokenizer = std::make_shared<text::Tokenizer>(std::move(tok));
  }
  for (const auto& spec : Sources()) {
    const double weight = config.*spec.weight;
    const bool monitored = spec.monitorable && std::find(config.monitor.begin(), config.monitor.end(), spec.name) != config.monitor.end();
    if (weight == 0 && !monitored) continue;
    ASSIGN_OR_RETURN(auto source, spec.make(context));
    for (const auto* m : source->models()) s->models_.push_back(m);
    s->chain_.push_back({spec.name, weight, spec.uses_models, std::move(source)});
  }
  s->chain_has_models_ = !s->models_.empty();
  if (!config.reference_model.empty()) {
    ASSIGN_OR_RETURN(s->reference_, model::LoadModel(config.reference_model, load));
    s->models_.push_back(s->reference_.get());
  }
  return s;
}

std::vector<std::string> Scorer::SourceNames() const {
  std::vector<std::string> out;
  for (const auto& link : chain_) {
    if (link.weight != 0) out.push_back(link.name);
  }
  return out;
}

absl::Status Scorer::code_refusal() const {
  for (const auto& link : chain_) {
    if (!link.source->refusal().ok()) return link.source->refusal();
  }
  return absl::OkStatus();
}

absl::Status Scorer::Validate(const Sample& s, bool want_ref) const {
  const bool with_ref = want_ref && !reference_.is_empty();
  for (const auto* net : models_) {
    const auto& c = net->config();
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
  if ((chain_has_models_ || with_ref) && s.prompt_ids_size() + s.completion_ids_size() == 0) {
    return absl::InvalidArgumentError("a sample without token ids cannot be scored by a model");
  }
  if (with_ref && s.completion_ids_size() > 0 && !(s.temperature() >= 0)) {
    return absl::InvalidArgumentError("temperature must be >= 0 (0 = greedy, taken as 1)");
  }
  if (s.logprobs_size() != 0 && s.logprobs_size() != s.completion_ids_size()) {
    return absl::InvalidArgumentError("logprobs and completion_ids differ in length");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ScoreOutcome>> Scorer::Score(std::vector<Sample>& samples, bool want_ref,
                                                         const std::vector<int32_t>& groups) {
  if (!groups.empty() && groups.size() != samples.size()) {
    return absl::InvalidArgumentError("groups must be empty or name one group per sample");
  }
  const size_t n = samples.size();
  ScoreBatch batch(samples, groups);
  std::vector<ScoreOutcome> outcomes(n);
  // 1. The rule-based sources.
  for (auto& link : chain_) {
    if (!link.uses_models) link.source->Score(batch);
  }
  // 2. The model checks; 3. the model sources and the reference, batched over the samples the checks accept.
  for (size_t i = 0; i < n; ++i) {
    absl::Status v = Validate(samples[i], want_ref);
    if (!v.ok()) batch.Fail(i, "input", v);
    batch.set_model_ok(i, v.ok());
  }
  RETURN_IF_ERROR(GuardExceptions("scoring forward", [&]() -> absl::Status {
    for (auto& link : chain_) {
      if (link.uses_models) link.source->Score(batch);
    }
    if (want_ref && !reference_.is_empty()) {
      std::vector<const Sample*> rows;
      std::vector<size_t> row_of;
      for (size_t i = 0; i < n; ++i) {
        if (batch.model_ok(i)) rows.push_back(&samples[i]), row_of.push_back(i);
      }
      if (rows.empty()) return absl::OkStatus();
      auto ref = CompletionLogProbs(reference_, RowsOf(rows), config_.batch_tokens);
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
  // 4. Totals: only samples that every source scored.
  std::map<std::string, double> weights;
  for (const auto& link : chain_) weights[link.name] = link.weight;
  for (size_t i = 0; i < n; ++i) {
    Sample& s = samples[i];
    outcomes[i].status = batch.error(i);
    s.clear_reward();
    s.mutable_reward_parts()->clear();
    if (!outcomes[i].status.ok()) {
      s.clear_step_rewards();
      s.clear_step_ends();
      continue;
    }
    double total = 0;
    for (const auto& [name, value] : batch.parts(i)) {
      (*s.mutable_reward_parts())[name] = value;
      total += weights.at(name) * value;
    }
    s.set_reward(static_cast<float>(total));
  }
  return outcomes;
}

}  // namespace rlhf::scoring

#include "services/scoring/scorer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <numeric>
#include <nlohmann/json.hpp>
#include <regex>

#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/model/checkpoint.h"
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

absl::StatusOr<std::unique_ptr<Scorer>> Scorer::Create(const RewardConfig& config) {
  std::unique_ptr<Scorer> s(new Scorer(config));
  if (s->SourceNames().empty()) {
    return absl::InvalidArgumentError("no reward source is on: give one a weight (reward.*_weight)");
  }
  if (config.format_weight != 0) {
    if (config.format_pattern.empty()) return absl::InvalidArgumentError("reward.format_weight needs reward.format_pattern");
    try {
      s->format_ = std::make_shared<FormatRe>(FormatRe{std::regex(config.format_pattern, std::regex::ECMAScript)});
    } catch (const std::regex_error& e) {
      return absl::InvalidArgumentError(absl::StrCat("reward.format_pattern does not compile: ", e.what()));
    }
  }
  if (config.code_weight != 0) {
    if (config.code_command.empty()) return absl::InvalidArgumentError("reward.code_weight needs reward.code_command");
    // Refuse to start, visibly, where the sandbox cannot isolate: never run generated code unconfined.
    ASSIGN_OR_RETURN(auto probe, RunSandboxed("true", {}, s->Limits()));
    if (probe.exit_code != 0) return absl::FailedPreconditionError("the code sandbox does not run commands here");
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
  return out;
}

absl::Status Scorer::Validate(const Sample& s, bool want_ref) const {
  for (const auto* net : {&reward_model_, &reference_}) {
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
  if ((!reward_model_.is_empty() || (want_ref && !reference_.is_empty())) && s.prompt_ids_size() + s.completion_ids_size() == 0) {
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

// Rows sorted by (temperature, length) and cut into batches of at most `budget` padded tokens.
std::vector<std::vector<size_t>> Batches(const std::vector<const Sample*>& rows, int64_t budget, bool by_temperature) {
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  auto len = [&](size_t i) { return static_cast<int64_t>(rows[i]->prompt_ids_size() + rows[i]->completion_ids_size()); };
  auto temp = [&](size_t i) { return by_temperature ? rows[i]->temperature() : 0.f; };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return temp(a) != temp(b) ? temp(a) < temp(b) : len(a) < len(b);
  });
  std::vector<std::vector<size_t>> out;
  int64_t longest = 0;
  for (size_t i : order) {
    const int64_t l = std::max<int64_t>(1, len(i));
    if (!out.empty() && temp(out.back()[0]) == temp(i) &&
        std::max(longest, l) * static_cast<int64_t>(out.back().size() + 1) <= budget) {
      out.back().push_back(i);
      longest = std::max(longest, l);
    } else {
      out.push_back({i});
      longest = l;
    }
  }
  return out;
}

// ids [B, T] right-padded with 0 and the attention mask.
std::pair<torch::Tensor, torch::Tensor> Pad(const std::vector<const Sample*>& rows, const std::vector<size_t>& batch) {
  int64_t t = 1;
  for (size_t i : batch) t = std::max<int64_t>(t, rows[i]->prompt_ids_size() + rows[i]->completion_ids_size());
  const int64_t b = static_cast<int64_t>(batch.size());
  auto ids = torch::zeros({b, t}, torch::kInt64);
  auto mask = torch::zeros({b, t}, torch::kInt64);
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const Sample& s = *rows[batch[static_cast<size_t>(r)]];
    int64_t c = 0;
    for (int32_t id : s.prompt_ids()) ia[r][c] = id, ma[r][c++] = 1;
    for (int32_t id : s.completion_ids()) ia[r][c] = id, ma[r][c++] = 1;
  }
  return {ids, mask};
}

}  // namespace

std::vector<float> Scorer::RewardModelScores(const std::vector<const Sample*>& rows) {
  torch::NoGradGuard ng;
  std::vector<float> out(rows.size());
  for (const auto& batch : Batches(rows, config_.batch_tokens, false)) {
    auto [ids, mask] = Pad(rows, batch);
    if (mask.all().item<bool>()) mask = torch::Tensor();  // no padding: the unmasked causal path is faster
    auto hidden = reward_model_->Hidden(ids, {mask});
    auto scores = reward_model_->SequenceScores(hidden, mask).to(torch::kFloat32).contiguous();  // [B]
    for (size_t k = 0; k < batch.size(); ++k) out[batch[k]] = scores[static_cast<int64_t>(k)].item<float>();
  }
  return out;
}

std::vector<std::vector<float>> Scorer::ReferenceLogProbs(const std::vector<const Sample*>& rows) {
  torch::NoGradGuard ng;
  std::vector<std::vector<float>> out(rows.size());
  for (const auto& batch : Batches(rows, config_.batch_tokens, true)) {
    auto [ids, mask] = Pad(rows, batch);
    if (mask.all().item<bool>()) mask = torch::Tensor();
    const float temp = rows[batch[0]]->temperature() > 0 ? rows[batch[0]]->temperature() : 1.f;
    auto hidden = reference_->Hidden(ids, {mask});
    // Log-prob of token t from the prediction at t - 1: [B, T-1].
    auto lp = reference_->TokenLogProbs(hidden.slice(1, 0, -1), ids.slice(1, 1), temp).logprobs.contiguous();
    auto acc = lp.accessor<float, 2>();
    for (size_t k = 0; k < batch.size(); ++k) {
      const Sample& s = *rows[batch[k]];
      const int64_t p = s.prompt_ids_size();
      auto& v = out[batch[k]];
      for (int64_t j = 0; j < s.completion_ids_size(); ++j) {
        // Token p + j is predicted at p + j - 1 (a completion at position 0 has no prediction: 0).
        v.push_back(p + j >= 1 ? acc[static_cast<int64_t>(k)][p + j - 1] : 0.f);
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<ScoreOutcome>> Scorer::Score(std::vector<Sample>& samples, bool want_ref) {
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
    if (config_.exact_match_weight != 0) {
      auto it = s.extra().find(config_.answer_field);
      if (it == s.extra().end()) {
        fail(i, "exact_match", absl::InvalidArgumentError(absl::StrCat("the sample has no '", config_.answer_field, "' field")));
      } else {
        // Pass-through values are JSON text: a JSON string is unquoted, a number taken as written.
        std::string truth = it->second;
        auto j = nlohmann::json::parse(truth, nullptr, false);
        if (!j.is_discarded() && j.is_string()) truth = j.get<std::string>();
        auto mode = config_.extract == "strict" ? ExtractMode::kStrict : ExtractMode::kFlexible;
        parts[i]["exact_match"] = AnswerMatches(s.completion(), truth, mode) ? 1.f : 0.f;
      }
    }
    if (format_) parts[i]["format"] = std::regex_match(s.completion(), format_->re) ? 1.f : 0.f;
    if (config_.length_weight != 0) {
      const double excess = std::max<double>(0.0, static_cast<double>(s.completion_ids_size() - config_.length_free_tokens));
      parts[i]["length"] = static_cast<float>(-excess / config_.length_scale_tokens);
    }
    if (config_.missing_eos_weight != 0) parts[i]["missing_eos"] = s.finish_reason() == FINISH_REASON_LENGTH ? -1.f : 0.f;
    if (config_.code_weight != 0) {
      std::map<std::string, std::string> files = {{config_.code_file, ExtractCode(s.completion())}};
      auto it = s.extra().find(config_.code_tests_field);
      if (it != s.extra().end()) {
        auto j = nlohmann::json::parse(it->second, nullptr, false);
        files["tests"] = (!j.is_discarded() && j.is_string()) ? j.get<std::string>() : it->second;
      }
      auto run = RunSandboxed(config_.code_command, files, Limits());
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
                                                 {"reward_model", config_.reward_model_weight}};
  for (size_t i = 0; i < n; ++i) {
    Sample& s = samples[i];
    s.clear_reward();
    s.mutable_reward_parts()->clear();
    if (!outcomes[i].status.ok()) continue;
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

// The reward sources that run models: reward_model (a score head), judge (a causal LM with a constitution)
// and process (per-step scores from the arithmetic checker or a process reward model).
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/model/checkpoint.h"
#include "common/text/tokenizer.h"
#include "services/scoring/forward.h"
#include "services/scoring/judge.h"
#include "services/scoring/process.h"
#include "services/scoring/scorer.h"
#include "services/scoring/sources.h"

namespace rlhf::scoring {

namespace {

// The score head of an HF *ForSequenceClassification model at the last token, on the samples that passed
// the model checks, batched by tokens.
class RewardModelSource : public RewardSource {
 public:
  RewardModelSource(model::Transformer net, int64_t batch_tokens) : net_(std::move(net)), batch_tokens_(batch_tokens) {}
  void Score(ScoreBatch& b) override {
    std::vector<const Sample*> rows;
    std::vector<size_t> row_of;
    for (size_t i = 0; i < b.samples.size(); ++i) {
      if (b.model_ok(i)) rows.push_back(&b.samples[i]), row_of.push_back(i);
    }
    if (rows.empty()) return;
    auto scores = LastTokenScores(net_, RowsOf(rows), batch_tokens_);
    for (size_t k = 0; k < rows.size(); ++k) {
      if (std::isfinite(scores[k])) {
        b.Set(row_of[k], "reward_model", scores[k]);
      } else {
        b.Fail(row_of[k], "reward_model", absl::InternalError("the reward model's score is not finite"));
      }
    }
  }
  std::vector<const model::TransformerImpl*> models() const override { return {net_.get()}; }

 private:
  model::Transformer net_;
  int64_t batch_tokens_;
};

// Pointwise: P(yes) per sample. Pairwise: the mean over the other samples of the same prompt (and request)
// of P(this one is better), each pair judged in both orders.
class JudgeSource : public RewardSource {
 public:
  JudgeSource(std::unique_ptr<Judge> judge, JudgeMode mode) : judge_(std::move(judge)), mode_(mode) {}
  void Score(ScoreBatch& b) override {
    const size_t n = b.samples.size();
    auto fail = [&](size_t i, const absl::Status& st) { b.Fail(i, "judge", st); };
    if (mode_ == JudgeMode::kPointwise) {
      std::vector<std::pair<std::string, std::string>> items;
      for (const auto& s : b.samples) items.emplace_back(s.prompt(), s.completion());
      auto p = judge_->Pointwise(items);
      for (size_t i = 0; i < n; ++i) {
        if (p[i].ok()) {
          b.Set(i, "judge", static_cast<float>(*p[i]));
        } else {
          fail(i, p[i].status());
        }
      }
      return;
    }
    // Pairwise: every pair of samples of one prompt (and group), judged in both orders.
    std::map<std::pair<int32_t, std::string>, std::vector<size_t>> by_prompt;
    for (size_t i = 0; i < n; ++i) by_prompt[{b.groups.empty() ? 0 : b.groups[i], b.samples[i].prompt_id()}].push_back(i);
    std::vector<Judge::Pair> pairs;
    std::vector<std::pair<size_t, size_t>> who;
    for (const auto& [key, members] : by_prompt) {
      if (members.size() < 2) {
        fail(members[0], absl::InvalidArgumentError("pairwise judging needs two or more samples of the prompt in one request"));
        continue;
      }
      for (size_t x = 0; x < members.size(); ++x) {
        for (size_t y = x + 1; y < members.size(); ++y) {
          const Sample& sa = b.samples[members[x]];
          pairs.push_back({sa.prompt(), sa.completion(), b.samples[members[y]].completion()});
          who.emplace_back(members[x], members[y]);
        }
      }
    }
    auto p = judge_->Pairwise(pairs);
    std::vector<double> wins(n, 0.0);
    std::vector<int> games(n, 0);
    for (size_t k = 0; k < pairs.size(); ++k) {
      const auto [x, y] = who[k];
      if (!p[k].ok()) {
        fail(x, p[k].status());
        fail(y, p[k].status());
        continue;
      }
      wins[x] += *p[k], wins[y] += 1.0 - *p[k];
      ++games[x], ++games[y];
    }
    for (size_t i = 0; i < n; ++i) {
      if (games[i] > 0) b.Set(i, "judge", static_cast<float>(wins[i] / games[i]));
    }
  }

 private:
  std::unique_ptr<Judge> judge_;
  JudgeMode mode_;
};

// Per-step scores in step_rewards (and, with the policy's tokenizer, each step's last token in step_ends),
// aggregated into reward_parts.process.
class ProcessSource : public RewardSource {
 public:
  ProcessSource(const RewardConfig& c, std::shared_ptr<text::Tokenizer> tokenizer, model::Transformer net)
      : separator_(c.process_separator), aggregate_(c.process_aggregate), batch_tokens_(c.batch_tokens),
        tokenizer_(std::move(tokenizer)), net_(std::move(net)) {}

  void Score(ScoreBatch& b) override {
    const size_t n = b.samples.size();
    auto fail = [&](size_t i, const absl::Status& st) { b.Fail(i, "process", st); };
    std::vector<std::vector<Step>> steps(n);
    std::vector<bool> ok(n, true);
    for (size_t i = 0; i < n; ++i) {
      Sample& s = b.samples[i];
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
      } else if (!net_.is_empty()) {
        fail(i, absl::InvalidArgumentError("the process reward model needs completion_ids"));
        ok[i] = false;
        continue;
      }
      for (auto& step : SplitSteps(text, separator_)) {
        if (net_.is_empty()) {
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
    if (!net_.is_empty()) {
      std::vector<const Sample*> rows;
      std::vector<size_t> row_of;
      for (size_t i = 0; i < n; ++i) {
        if (ok[i] && !steps[i].empty()) rows.push_back(&b.samples[i]), row_of.push_back(i);
      }
      auto scores = CompletionTokenScores(net_, RowsOf(rows), batch_tokens_);
      for (size_t k = 0; k < rows.size(); ++k) {
        Sample& s = b.samples[row_of[k]];
        for (int32_t e : s.step_ends()) s.add_step_rewards(1.f / (1.f + std::exp(-scores[k][static_cast<size_t>(e)])));
      }
    }
    for (size_t i = 0; i < n; ++i) {
      if (!ok[i]) continue;
      const Sample& s = b.samples[i];
      if (std::any_of(s.step_rewards().begin(), s.step_rewards().end(), [](float v) { return !std::isfinite(v); })) {
        fail(i, absl::InternalError("a step score is not finite"));
        continue;
      }
      b.Set(i, "process", AggregateSteps({s.step_rewards().begin(), s.step_rewards().end()}, aggregate_));
    }
  }
  std::vector<const model::TransformerImpl*> models() const override {
    if (net_.is_empty()) return {};
    return {net_.get()};
  }

 private:
  std::string separator_;
  StepAggregate aggregate_;
  int64_t batch_tokens_;
  std::shared_ptr<text::Tokenizer> tokenizer_;
  model::Transformer net_;  // empty: the arithmetic checker
};

}  // namespace

absl::StatusOr<std::unique_ptr<RewardSource>> MakeRewardModelSource(const SourceContext& c) {
  if (c.config.reward_model.empty()) return absl::InvalidArgumentError("reward.reward_model_weight needs reward.reward_model");
  auto lo = c.load;
  lo.head = model::Head::kSequenceClassification;
  ASSIGN_OR_RETURN(auto net, model::LoadModel(c.config.reward_model, lo));
  return std::make_unique<RewardModelSource>(std::move(net), c.config.batch_tokens);
}

absl::StatusOr<std::unique_ptr<RewardSource>> MakeJudgeSource(const SourceContext& c) {
  ASSIGN_OR_RETURN(auto judge, Judge::Create(c.config));
  return std::make_unique<JudgeSource>(std::move(judge), c.config.judge_mode);
}

absl::StatusOr<std::unique_ptr<RewardSource>> MakeProcessSource(const SourceContext& c) {
  const auto& config = c.config;
  if (config.process_separator.empty()) return absl::InvalidArgumentError("reward.process_separator is empty");
  model::Transformer net{nullptr};
  if (config.process_source == ProcessSourceKind::kModel) {
    if (config.process_model.empty()) return absl::InvalidArgumentError("reward.process_source model needs reward.process_model");
    if (!c.tokenizer) return absl::InvalidArgumentError("reward.process_source model needs reward.tokenizer to place step ends");
    ASSIGN_OR_RETURN(net, model::LoadModel(config.process_model, c.load));
    if (net->score.is_empty() || net->config().num_labels != 1) {
      return absl::InvalidArgumentError("reward.process_model needs a score head with num_labels 1");
    }
  }
  return std::make_unique<ProcessSource>(config, c.tokenizer, std::move(net));
}

}  // namespace rlhf::scoring
